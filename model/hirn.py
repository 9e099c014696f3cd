"""HiRN: hierarchical recurrent video super-resolution (x4).

The model owns the parameters (named as in the published checkpoints) and
runs a clip by walking the plan of ``hirn.core.schedule`` with its step
modules (``hirn.model.steps``).
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from hirn.core.constants import FP32_GRAPHS, MIN_SIZE, PRECISIONS
from hirn.core.errors import InputError
from hirn.core.liveness import make_schedule
from hirn.core.recurrence import walk
from hirn.core.schedule import BRANCHES, SPATIAL, FeatureRef, FlowRef

from .alignment import SecondOrderDeformableAlignment
from .attention import temporal_wavelet_attention
from .blocks import ResStack, conv3x3
from .spynet import SpyNet
from .steps import Compose, Decode, Encode, Flow, PropagationStep, StepModules

# Feature dtypes of the half precisions (step_modules)
HALF_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


def check_clip(lq: Tensor) -> None:
    """Raise :class:`InputError` unless ``lq`` is a valid ``[N, T, 3, H, W]`` clip."""
    if not isinstance(lq, Tensor):
        raise InputError(f"expected a torch.Tensor clip [N, T, 3, H, W], got {type(lq).__name__}")
    if lq.dim() != 5:
        raise InputError(f"expected a clip of shape [N, T, 3, H, W] (5 dims), got shape "
                         f"{list(lq.shape)}; add a batch axis with lq.unsqueeze(0) for one clip")
    n, t, c, h, w = lq.shape
    if c != 3:
        raise InputError(f"expected 3 RGB channels at dim 2, got {c} (shape {list(lq.shape)}); "
                         "convert gray or RGBA frames to RGB first")
    if n < 1 or t < 1:
        raise InputError(f"the clip is empty (shape {list(lq.shape)})")
    if not lq.is_floating_point():
        raise InputError(f"expected floating-point RGB in [0, 1], got dtype {lq.dtype}; "
                         "for uint8 frames use lq.float() / 255")
    if h % 2 or w % 2 or h < MIN_SIZE or w < MIN_SIZE:
        raise InputError(f"frame size {h}x{w} (HxW) is not supported: height and width must be "
                         f"even and at least {MIN_SIZE}; pad the frames (reflection) and crop "
                         "the output, as hirn-run does")
    if not bool(torch.isfinite(lq).all()):
        raise InputError("the clip contains NaN or Inf values")


class HiRN(nn.Module):
    """HiRN x4 video super-resolution.

    Args:
        mid_channels: feature channels (64 in the published model).
        num_blocks: residual blocks per propagation backbone (7 published).
    """

    def __init__(self, mid_channels: int = 64, num_blocks: int = 7):
        super().__init__()
        c = mid_channels
        self.mid_channels, self.num_blocks = mid_channels, num_blocks
        self.spynet = SpyNet()
        self.feat_extract = ResStack(3, c, 5)
        names = [f"{b}_1" for b in BRANCHES]
        self.deform_align = nn.ModuleDict({n: SecondOrderDeformableAlignment(c, 16) for n in names})
        self.backbone = nn.ModuleDict({n: ResStack((6 + k) * c, c, num_blocks)
                                       for k, n in enumerate(names)})
        self.twa = nn.ModuleDict({n: temporal_wavelet_attention(c) for n in names})
        self.reconstruction = ResStack(4 * c, c, 5)
        self.upconv1 = conv3x3(c, 4 * c)
        self.upconv2 = conv3x3(c, 64 * 4)
        self.conv_hr = conv3x3(64, 64)
        self.conv_last = conv3x3(64, 3)
        # Plain attribute, not a submodule: the wrappers share our parameters.
        self.__dict__["_steps"] = None

    @property
    def steps(self) -> StepModules:
        """The step modules the clip forward calls (and the exporter exports)."""
        if self._steps is None:
            propagation = {}
            for k, branch in enumerate(BRANCHES):
                name = f"{branch}_1"
                for aligned in (False, True):
                    propagation[(branch, aligned)] = PropagationStep(
                        self.deform_align[name], self.twa[name], self.backbone[name],
                        num_context=k, aligned=aligned)
            self.__dict__["_steps"] = StepModules(Encode(self.feat_extract), Flow(self.spynet),
                                                  Compose(), propagation, Decode(self))
        return self._steps

    def step_modules(self, precision: str = "fp32") -> dict[str, nn.Module]:
        """The step modules by graph name (``encode``, ``step_backward``, ...) in ``precision``.

        In FP16 or bf16 every graph but :data:`FP32_GRAPHS` (flows and their chaining) runs
        on a half-precision copy of the weights; this model itself is left in FP32.
        """
        if precision not in PRECISIONS:
            raise ValueError(f"unknown precision {precision!r}; choose from {PRECISIONS}")
        modules = self.steps.named()
        if precision != "fp32":
            half = copy.deepcopy(self).to(HALF_DTYPES[precision])
            half.__dict__["_steps"] = None  # wrap the copy's own (half) submodules afresh
            modules.update({name: module for name, module in half.steps.named().items()
                            if name not in FP32_GRAPHS})
        return modules

    def compute_flows(self, lq: Tensor) -> dict[FlowRef, Tensor]:
        """SpyNet flows of a clip ``[N, T, 3, H, W]``, each ``[N, 2, H, W]``."""
        n, t, c, h, w = lq.shape
        if t < 2:
            return {}
        earlier = lq[:, :-1].reshape(-1, c, h, w)
        later = lq[:, 1:].reshape(-1, c, h, w)
        flows_backward = self.steps.flow(earlier, later).view(n, t - 1, 2, h, w)
        if t % 2 == 0 and torch.equal(lq, lq.flip(1)):
            # A mirror-extended clip: forward flows are backward flows reversed.
            flows_forward = flows_backward.flip(1)
        else:
            flows_forward = self.steps.flow(later, earlier).view(n, t - 1, 2, h, w)
        flows = {}
        for i in range(t - 1):
            flows[FlowRef("backward", i)] = flows_backward[:, i]
            flows[FlowRef("forward", i)] = flows_forward[:, i]
        return flows

    def forward(self, lq: Tensor) -> Tensor:
        """Upscale a clip: ``[N, T, 3, H, W]`` in [0, 1] -> ``[N, T, 3, 4H, 4W]``.

        Walks the order of :mod:`hirn.core.liveness`, as the runtime does: each branch map
        is dropped after its last reader (in evaluation; autograd keeps what it needs).
        """
        check_clip(lq)
        n, t, _, h, w = lq.shape
        steps, schedule = self.steps, make_schedule(t)
        spatial = steps.encode(lq.reshape(n * t, 3, h, w)).view(n, t, -1, h, w)
        feats: dict[FeatureRef, Tensor] = {FeatureRef(SPATIAL, i): spatial[:, i] for i in range(t)}
        flows = self.compute_flows(lq)
        outputs: dict[int, Tensor] = {}

        def decode(frames: tuple[int, ...], maps: list[list[Tensor]]) -> None:
            for i, inputs in zip(frames, maps):
                outputs[i] = steps.decode(lq[:, i], *inputs)

        walk(schedule.plan, feats, flows,
             run_step=lambda step, inputs: steps.propagation[(step.branch, step.aligned)](*inputs),
             compose=steps.compose, zero_feature=spatial.new_zeros(spatial[:, 0].shape),
             zero_flow=lq.new_zeros(n, 2, h, w), schedule=schedule, decode=decode)
        del spatial, feats
        return torch.stack([outputs.pop(i) for i in range(t)], dim=1)
