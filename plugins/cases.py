"""Inputs shaped and distributed like HiRN's alignment convolution, for kernel checks and timing.

HiRN's second-order alignment (``model/alignment.py``) runs DCNv2 on two concatenated
64-channel features (C_in = 128) with 16 offset groups, 3x3 taps and 64 output channels.
Offsets are a smooth flow of a few pixels per earlier feature (groups 0-7 follow the first,
8-15 the second) plus ``10 * tanh(.)`` residuals; the mask is a sigmoid.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

C_IN, C_OUT, GROUPS, KERNEL = 128, 64, 16, 3


@dataclass(frozen=True)
class DeformCase:
    """One call's tensors and attributes (HiRN's: stride, padding, dilation 1)."""

    input: object   # [N, C_in, H, W]
    offset: object  # [N, 2 * G * kh * kw, H_out, W_out], (dy, dx) per tap and group
    mask: object    # [N, G * kh * kw, H_out, W_out] in (0, 1), or None
    weight: object  # [C_out, C_in, kh, kw]
    bias: object    # [C_out] or None
    stride: int | tuple[int, int] = 1
    padding: int | tuple[int, int] = 1
    dilation: int | tuple[int, int] = 1

    def to(self, *args, **kwargs) -> DeformCase:
        """The same case with ``Tensor.to(*args, **kwargs)`` applied to every tensor."""
        cast = {name: None if t is None else t.to(*args, **kwargs) for name, t in (
            ("input", self.input), ("offset", self.offset), ("mask", self.mask),
            ("weight", self.weight), ("bias", self.bias))}
        return replace(self, **cast)

    def args(self) -> tuple:
        """Positional arguments of ``deform_conv_cuda`` / ``deform_conv_emulated``."""
        return (self.input, self.offset, self.mask, self.weight, self.bias, self.stride,
                self.padding, self.dilation)


def _smooth(shape, height: int, width: int, cell: int, generator, device):
    """Gaussian noise on a grid ``cell`` pixels apart, bicubically upsampled to H x W."""
    import torch
    import torch.nn.functional as F

    coarse = torch.randn(*shape, height // cell + 2, width // cell + 2, generator=generator,
                         device=device)
    return F.interpolate(coarse, size=(height, width), mode="bicubic", align_corners=False)


def hirn_case(height: int, width: int, batch: int = 1, seed: int = 0,
              device: str = "cpu") -> DeformCase:
    """A float32 case at feature size ``height`` x ``width`` (e.g. 180x320, 720x1280)."""
    import torch

    g = torch.Generator(device=device).manual_seed(seed)
    taps = KERNEL * KERNEL
    # Features after LeakyReLU convolutions: smooth structure plus per-pixel detail.
    feat = _smooth((batch, C_IN), height, width, 8, g, device)
    feat += 0.3 * torch.randn(batch, C_IN, height, width, generator=g, device=device)
    # Two flows (x, y) of a few pixels, entering the offsets as (y, x) like in alignment.py.
    flows = [3.0 * _smooth((batch, 2), height, width, 64, g, device) for _ in range(2)]
    residual = 10.0 * torch.tanh(0.4 * torch.randn(batch, 2 * GROUPS * taps, height, width,
                                                   generator=g, device=device))
    half = GROUPS * taps  # channels of the first 8 groups
    offset = residual
    offset[:, :half] += flows[0].flip(1).repeat(1, half // 2, 1, 1)
    offset[:, half:] += flows[1].flip(1).repeat(1, half // 2, 1, 1)
    mask = torch.sigmoid(torch.randn(batch, GROUPS * taps, height, width, generator=g,
                                     device=device))
    bound = 1.0 / (C_IN * taps) ** 0.5  # the model's initialisation
    weight = (torch.rand(C_OUT, C_IN, KERNEL, KERNEL, generator=g, device=device) * 2 - 1) * bound
    bias = 0.1 * torch.randn(C_OUT, generator=g, device=device)
    return DeformCase(feat, offset, mask, weight, bias)


def random_case(c_in: int = 16, groups: int = 2, c_out: int = 8, size=(7, 9), kernel=(3, 3),
                stride=1, padding=1, dilation=1, batch: int = 1, seed: int = 0,
                device: str = "cpu") -> DeformCase:
    """A small float32 case with offsets up to 6 px, so that many taps straddle the borders."""
    import torch

    g = torch.Generator().manual_seed(seed)
    (h, w), (kh, kw) = size, kernel
    (sh, sw), (ph, pw), (dh, dw) = ((v, v) if isinstance(v, int) else tuple(v)
                                    for v in (stride, padding, dilation))
    h_out = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    w_out = (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    taps = kh * kw
    tensors = (torch.randn(batch, c_in, h, w, generator=g),
               (torch.rand(batch, 2 * groups * taps, h_out, w_out, generator=g) - 0.5) * 12,
               torch.rand(batch, groups * taps, h_out, w_out, generator=g),
               torch.randn(c_out, c_in, kh, kw, generator=g) / math.sqrt(c_in * taps),
               torch.randn(c_out, generator=g))
    return DeformCase(*(t.to(device) for t in tensors), stride, padding, dilation)
