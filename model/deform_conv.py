"""Modulated deformable convolution (DCNv2) in plain PyTorch.

Same semantics as ``torchvision.ops.deform_conv2d`` but built from
``grid_sample`` and a matrix product, so it runs on any device without
torchvision and exports to ONNX with standard operators.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor


def _pair(v: int | tuple[int, int]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)


# How ``deform_conv2d`` appears in an ONNX graph traced by the exporter:
# "decomposed" (GridSample, MatMul, ...), "onnx" (the standard DeformConv op, opset 19)
# or "plugin" (our own HirnDeformConv node, run by the TensorRT plugin).
EXPORT_FORMS = ("onnx", "decomposed", "plugin")
_export_form = "decomposed"
PLUGIN_DOMAIN, PLUGIN_OP = "hirn", "HirnDeformConv"


@contextmanager
def export_form(form: str) -> Iterator[None]:
    """Within this block, traced ``deform_conv2d`` calls export as ``form``."""
    global _export_form
    if form not in EXPORT_FORMS:
        raise ValueError(f"unknown deformable-conv form {form!r}; choose from {EXPORT_FORMS}")
    previous, _export_form = _export_form, form
    try:
        yield
    finally:
        _export_form = previous


class _DeformConvNode(torch.autograd.Function):
    """Exports as one DeformConv / HirnDeformConv node.

    Used only while tracing: the traced values need the right shape, not the
    right numbers (tracing the full computation here breaks the exporter).
    """

    @staticmethod
    def forward(ctx, input, offset, mask, weight, bias, stride, padding, dilation, kernel,
                groups, form):
        return input.new_zeros(input.shape[0], weight.shape[0], *offset.shape[-2:])

    @staticmethod
    def symbolic(g, input, offset, mask, weight, bias, stride, padding, dilation, kernel,
                 groups, form):
        kh, kw = kernel
        if form == "onnx":
            return g.op("DeformConv", input, weight, offset, bias, mask,
                        dilations_i=list(dilation), group_i=1, kernel_shape_i=[kh, kw],
                        offset_group_i=groups, pads_i=[padding[0], padding[1]] * 2,
                        strides_i=list(stride))
        # The plugin takes FP32 offsets and mask beside FP16 features, so sampling positions
        # stay exact. TensorRT's ONNX parser finds the creator by op type, plugin_version and
        # plugin_namespace (parsers before 10.10 do not read the node's domain).
        return g.op(f"{PLUGIN_DOMAIN}::{PLUGIN_OP}", input, offset, mask, weight, bias,
                    stride_i=list(stride), padding_i=list(padding), dilation_i=list(dilation),
                    deformable_groups_i=groups, plugin_namespace_s=PLUGIN_DOMAIN)


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
    if torch.jit.is_tracing() and _export_form != "decomposed":
        if mask is None or bias is None:
            raise ValueError("the DeformConv export forms need a mask and a bias")
        if input.dtype != offset.dtype and _export_form == "onnx":
            # DeformConv takes one dtype: FP16 features are sampled at FP32 positions.
            out = deform_conv2d(input.to(offset.dtype), offset, weight.to(offset.dtype),
                                bias.to(offset.dtype), stride, padding, dilation,
                                mask.to(offset.dtype))
            return out.to(input.dtype)
        with warnings.catch_warnings():  # channel counts are constants of the graph
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            kernel = (int(weight.shape[-2]), int(weight.shape[-1]))
            groups = int(offset.shape[1]) // (2 * kernel[0] * kernel[1])
        return _DeformConvNode.apply(input, offset, mask, weight, bias, _pair(stride),
                                     _pair(padding), _pair(dilation), kernel, groups,
                                     _export_form)
    return _decomposed(input, offset, weight, bias, stride, padding, dilation, mask)


def _decomposed(input, offset, weight, bias, stride, padding, dilation, mask):
    n, c_in, h, w = input.shape
    c_out, c_in_per_wgroup, kh, kw = weight.shape
    (sh, sw), (ph, pw), (dh, dw) = _pair(stride), _pair(padding), _pair(dilation)
    taps = kh * kw
    h_out, w_out = offset.shape[-2:]
    offset_groups = offset.shape[1] // (2 * taps)
    weight_groups = c_in // c_in_per_wgroup
    if not torch.jit.is_tracing() and (offset.shape[1] != 2 * offset_groups * taps
                                       or c_in % offset_groups):
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
