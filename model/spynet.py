"""SpyNet optical flow (coarse-to-fine, six levels)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .warp import flow_warp

LEVELS = 6


class SpyNetLevel(nn.Module):
    """One pyramid level: 7x7 convs 8 -> 32 -> 64 -> 32 -> 16 -> 2 with ReLUs."""

    def __init__(self):
        super().__init__()
        widths = (8, 32, 64, 32, 16, 2)
        layers: list[nn.Module] = []
        for i, (cin, cout) in enumerate(zip(widths[:-1], widths[1:])):
            layers.append(nn.Conv2d(cin, cout, 7, 1, 3))
            if i < len(widths) - 2:
                layers.append(nn.ReLU(inplace=False))
        self.basic_module = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        """``[N, 8, h, w]`` (ref, warped supp, flow) -> flow residual ``[N, 2, h, w]``."""
        return self.basic_module(x)


class SpyNet(nn.Module):
    """Estimates ``flow`` such that ``warp(supp, flow) ~= ref``."""

    def __init__(self):
        super().__init__()
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))
        self.basic_module = nn.ModuleList(SpyNetLevel() for _ in range(LEVELS))

    def _pyramid(self, x: Tensor) -> list[Tensor]:
        """Normalised image pyramid, coarsest first."""
        levels = [(x - self.mean) / self.std]
        for _ in range(LEVELS - 1):
            levels.append(F.avg_pool2d(levels[-1], kernel_size=2, stride=2,
                                       count_include_pad=False))
        return levels[::-1]

    def _estimate(self, ref: Tensor, supp: Tensor) -> Tensor:
        refs, supps = self._pyramid(ref), self._pyramid(supp)
        flow = None
        for level, (ref_l, supp_l) in enumerate(zip(refs, supps)):
            if flow is None:
                # The original upsamples a zero flow of half the coarsest size and
                # pads it: zeros of the coarsest size, with no size test to trace.
                up = torch.zeros_like(ref_l[:, :2])
            else:
                # Sizes are divisible by 32, so each level is exactly twice the last.
                up = F.interpolate(flow, scale_factor=2, mode="bilinear", align_corners=True) * 2.0
            warped = flow_warp(supp_l, up, padding_mode="border")
            flow = self.basic_module[level](torch.cat([ref_l, warped, up], dim=1)) + up
        return flow

    def forward(self, ref: Tensor, supp: Tensor) -> Tensor:
        """Flow from ``ref`` to ``supp``.

        Args:
            ref, supp: ``[N, 3, H, W]`` RGB frames in [0, 1].

        Returns:
            ``[N, 2, H, W]`` flow in pixels (channel 0 horizontal).
        """
        h, w = ref.shape[-2:]
        # The network needs sizes divisible by 2^5; it always resizes, even when they are.
        # Integer arithmetic (not math.ceil) so that ONNX export keeps sizes dynamic.
        hr, wr = (h + 31) // 32 * 32, (w + 31) // 32 * 32
        ref = F.interpolate(ref, size=(hr, wr), mode="bilinear", align_corners=False)
        supp = F.interpolate(supp, size=(hr, wr), mode="bilinear", align_corners=False)
        flow = F.interpolate(self._estimate(ref, supp), size=(h, w), mode="bilinear",
                             align_corners=False)
        return torch.cat([flow[:, :1] * (w / wr), flow[:, 1:] * (h / hr)], dim=1)
