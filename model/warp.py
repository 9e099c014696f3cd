"""Backward warping of images and features by optical flow."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def pixel_grid(height: int, width: int, like: Tensor) -> Tensor:
    """``[H, W, 2]`` pixel coordinates (x, y) in the dtype/device of ``like``."""
    ys = torch.arange(height, device=like.device, dtype=like.dtype)
    xs = torch.arange(width, device=like.device, dtype=like.dtype)
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack((grid_x, grid_y), dim=2)


def _last_index(size) -> int:
    """``max(size - 1, 1)``; traced sizes (ONNX export) are never 1 for valid frames."""
    return size - 1 if torch.jit.is_tracing() else max(size - 1, 1)


def flow_warp(x: Tensor, flow: Tensor, padding_mode: str = "zeros") -> Tensor:
    """Sample ``x`` at each pixel displaced by ``flow`` (bilinear).

    Args:
        x: ``[N, C, H, W]`` image or features.
        flow: ``[N, 2, H, W]``; channel 0 is the horizontal, channel 1 the
            vertical displacement in pixels.
        padding_mode: ``zeros`` or ``border``, for samples outside ``x``.

    Returns:
        ``[N, C, H, W]``: ``out[:, :, i, j] = x[:, :, i + flow[1], j + flow[0]]``.
    """
    _, _, h, w = x.shape
    # Same arithmetic order as the original so results agree to rounding.
    vgrid = pixel_grid(h, w, flow) + flow.permute(0, 2, 3, 1)
    vgrid_x = 2.0 * vgrid[..., 0] / _last_index(w) - 1.0
    vgrid_y = 2.0 * vgrid[..., 1] / _last_index(h) - 1.0
    grid = torch.stack((vgrid_x, vgrid_y), dim=3)
    # Sampling positions stay in the flow's precision (FP32 when features are
    # FP16): half-precision grids lose sub-pixel accuracy at large sizes.
    out = F.grid_sample(x.to(grid.dtype), grid, mode="bilinear", padding_mode=padding_mode,
                        align_corners=True)
    return out.to(x.dtype)


def compose_flows(a: Tensor, b: Tensor) -> Tensor:
    """Chain two flows: ``a + warp(b, a)`` (follow ``a``, then ``b``)."""
    return a + flow_warp(b, a)
