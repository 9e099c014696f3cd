"""Modulated deformable convolution (DCNv2) in plain PyTorch.

Same semantics as ``torchvision.ops.deform_conv2d`` but built from
``grid_sample`` and a matrix product, so it runs on any device without
torchvision and exports to ONNX with standard operators.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def _pair(v: int | tuple[int, int]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)


def deform_conv2d(
    input: Tensor,
    offset: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] = 0,
    dilation: int | tuple[int, int] = 1,
    mask: Tensor | None = None,
) -> Tensor:
    """Deformable convolution with optional modulation.

    Args:
        input: ``[N, C_in, H, W]``.
        offset: ``[N, 2 * G * kh * kw, H_out, W_out]`` for ``G`` offset groups;
            channel ``2 * (g * kh * kw + k)`` is the vertical and ``+ 1`` the
            horizontal shift of kernel tap ``k`` (row-major) in group ``g``.
        weight: ``[C_out, C_in / weight_groups, kh, kw]``.
        bias: ``[C_out]`` or None.
        stride, padding, dilation: as for ``nn.Conv2d``.
        mask: ``[N, G * kh * kw, H_out, W_out]`` modulation, or None.

    Returns:
        ``[N, C_out, H_out, W_out]``. Samples are bilinear; positions outside
        the input read zeros.
    """
    n, c_in, h, w = input.shape
    c_out, c_in_per_wgroup, kh, kw = weight.shape
    (sh, sw), (ph, pw), (dh, dw) = _pair(stride), _pair(padding), _pair(dilation)
    taps = kh * kw
    h_out, w_out = offset.shape[-2:]
    offset_groups = offset.shape[1] // (2 * taps)
    weight_groups = c_in // c_in_per_wgroup
    if offset.shape[1] != 2 * offset_groups * taps or c_in % offset_groups:
        raise ValueError(f"offset has {offset.shape[1]} channels: expected 2 * groups * {taps} "
                         f"with groups dividing {c_in} input channels")

    # Sampling positions [N, G, taps, H_out, W_out] in input pixels.
    offset = offset.reshape(n, offset_groups, taps, 2, h_out, w_out)
    kernel_y = torch.arange(kh, device=input.device, dtype=offset.dtype).repeat_interleave(kw)
    kernel_x = torch.arange(kw, device=input.device, dtype=offset.dtype).repeat(kh)
    out_y = torch.arange(h_out, device=input.device, dtype=offset.dtype) * sh - ph
    out_x = torch.arange(w_out, device=input.device, dtype=offset.dtype) * sw - pw
    pos_y = out_y.view(1, 1, 1, h_out, 1) + (kernel_y * dh).view(1, 1, taps, 1, 1)
    pos_x = out_x.view(1, 1, 1, 1, w_out) + (kernel_x * dw).view(1, 1, taps, 1, 1)
    pos_y = pos_y + offset[:, :, :, 0]
    pos_x = pos_x + offset[:, :, :, 1]
    # grid_sample with align_corners=False maps -1..1 onto pixel edges; zero
    # padding then reproduces torchvision's "zero outside" bilinear rule.
    grid = torch.stack(((2 * pos_x + 1) / w - 1, (2 * pos_y + 1) / h - 1), dim=-1)
    grid = grid.reshape(n * offset_groups, taps * h_out, w_out, 2)

    group_input = input.reshape(n * offset_groups, c_in // offset_groups, h, w)
    sampled = F.grid_sample(group_input.to(grid.dtype), grid, mode="bilinear",
                            padding_mode="zeros", align_corners=False).to(input.dtype)
    sampled = sampled.reshape(n, offset_groups, c_in // offset_groups, taps, h_out, w_out)
    if mask is not None:
        sampled = sampled * mask.reshape(n, offset_groups, 1, taps, h_out, w_out)

    # Columns ordered (input channel, tap), matching weight.view(C_out, -1).
    columns = sampled.reshape(n, weight_groups, c_in_per_wgroup * taps, h_out * w_out)
    kernels = weight.reshape(weight_groups, c_out // weight_groups, c_in_per_wgroup * taps)
    out = torch.matmul(kernels, columns).reshape(n, c_out, h_out, w_out)
    if bias is not None:
        out = out + bias.view(1, c_out, 1, 1)
    return out
