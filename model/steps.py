"""HiRN's per-step modules: the units the clip forward calls and the exporter exports.

Each wrapper borrows the model's submodules (it registers no parameters of
its own in the model), so the PyTorch forward and every exported graph run
exactly the same code.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .warp import compose_flows, flow_warp


class Encode(nn.Module):
    """LR frames ``[B, 3, H, W]`` -> spatial features ``[B, C, H, W]``."""

    def __init__(self, feat_extract: nn.Module):
        super().__init__()
        self.feat_extract = feat_extract

    def forward(self, frames: Tensor) -> Tensor:
        # Frames arrive in FP32; an FP16 model takes them in its own precision.
        return self.feat_extract(frames.to(self.feat_extract.main[0].weight.dtype))


class Flow(nn.Module):
    """Frames ``ref, supp: [B, 3, H, W]`` -> flow ``[B, 2, H, W]`` with warp(supp) ~= ref."""

    def __init__(self, spynet: nn.Module):
        super().__init__()
        self.spynet = spynet

    def forward(self, ref: Tensor, supp: Tensor) -> Tensor:
        return self.spynet(ref, supp)


class Compose(nn.Module):
    """Flows ``a, b: [B, 2, H, W]`` -> ``a + warp(b, a)`` (one link of a flow chain)."""

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        return compose_flows(a, b)


class PropagationStep(nn.Module):
    """One recurrent step of a branch (see ``hirn.core.schedule.Step``).

    Inputs, in order: ``current [B, C, H, W]``, ``num_context`` context maps
    ``[B, C, H, W]`` (the last, or ``current`` if none, is the attention's
    centre), then, when ``aligned``: ``feat_a, feat_b [B, C, H, W]`` and
    ``flow_a, flow_b [B, 2, H, W]``. Output: the branch feature ``[B, C, H, W]``.
    A step without alignment treats the earlier features as zeros.
    """

    def __init__(self, align: nn.Module, twa: nn.Module, backbone: nn.Module,
                 num_context: int, aligned: bool):
        super().__init__()
        self.align, self.twa, self.backbone = align, twa, backbone
        self.num_context = num_context
        self.aligned = aligned

    def forward(self, current: Tensor, *inputs: Tensor) -> Tensor:
        context = list(inputs[: self.num_context])
        centre = context[-1] if context else current
        if self.aligned:
            feat_a, feat_b, flow_a, flow_b = inputs[self.num_context:]
            warped_a = flow_warp(feat_a, flow_a)
            warped_b = flow_warp(feat_b, flow_b)
            prop = self.align(torch.cat([feat_a, feat_b], dim=1),
                              torch.cat([warped_a, current, warped_b], dim=1), flow_a, flow_b)
        else:
            # Warping zeros gives zeros: the first step needs no flows at all.
            warped_a = warped_b = prop = torch.zeros_like(current)
        attended = self.twa(torch.stack([warped_a, centre, warped_b], dim=1))
        return prop + self.backbone(torch.cat([current, *context, prop, attended], dim=1))


class Decode(nn.Module):
    """Reconstruct HR frames from the four feature maps and the LR frame.

    Inputs: ``lq [B, 3, H, W]``, ``spatial, backward, forward, group
    [B, C, H, W]``. Output: ``[B, 3, 4H, 4W]`` (not clamped).
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.reconstruction = model.reconstruction
        self.upconv1, self.upconv2 = model.upconv1, model.upconv2
        self.conv_hr, self.conv_last = model.conv_hr, model.conv_last

    def forward(self, lq: Tensor, spatial: Tensor, backward: Tensor, forward: Tensor,
                group: Tensor) -> Tensor:
        h = self.reconstruction(torch.cat([spatial, backward, forward, group], dim=1))
        h = F.leaky_relu(F.pixel_shuffle(self.upconv1(h), 2), 0.1)
        h = F.leaky_relu(F.pixel_shuffle(self.upconv2(h), 2), 0.1)
        h = self.conv_last(F.leaky_relu(self.conv_hr(h), 0.1))
        base = F.interpolate(lq, scale_factor=4, mode="bilinear", align_corners=False)
        # The output keeps the frames' precision (FP32) whatever the features'.
        return h.to(base.dtype) + base


@dataclass(frozen=True)
class StepModules:
    """Every step module of a model; ``propagation[(branch, aligned)]``."""

    encode: Encode
    flow: Flow
    compose: Compose
    propagation: dict[tuple[str, bool], PropagationStep]
    decode: Decode

    def named(self) -> dict[str, nn.Module]:
        """Modules by graph name: ``encode``, ``step_backward``, ``step_backward_first``, ..."""
        out: dict[str, nn.Module] = {"encode": self.encode, "flow": self.flow,
                                     "compose": self.compose}
        for (branch, aligned), module in self.propagation.items():
            out[f"step_{branch}" if aligned else f"step_{branch}_first"] = module
        out["decode"] = self.decode
        return out
