"""Inputs shaped and distributed like HiRN's alignment convolution, for kernel checks and timing.

HiRN's second-order alignment (``train/alignment.py``) runs DCNv2 on two concatenated
64-channel features (C_in = 128) with 16 offset groups, 3x3 taps and 64 output channels.
Offsets are a smooth flow of a few pixels per earlier feature (groups 0-7 follow the first,
8-15 the second) plus ``10 * tanh(.)`` residuals; the mask is a sigmoid.
"""

from __future__ import annotations

from dataclasses import dataclass

C_IN, C_OUT, GROUPS, KERNEL = 128, 64, 16, 3


@dataclass(frozen=True)
class DeformCase:
    """One call's tensors; stride, padding and dilation are those of HiRN (1, 1, 1)."""

    input: object   # [N, 128, H, W]
    offset: object  # [N, 2 * 16 * 9, H, W], (dy, dx) per tap and group
    mask: object    # [N, 16 * 9, H, W] in (0, 1)
    weight: object  # [64, 128, 3, 3]
    bias: object    # [64]
    stride: int = 1
    padding: int = 1
    dilation: int = 1

    def to(self, dtype) -> DeformCase:
        """The same case with every tensor cast to ``dtype``."""
        return DeformCase(*(t.to(dtype) for t in (self.input, self.offset, self.mask,
                                                   self.weight, self.bias)))

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
