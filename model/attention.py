"""Temporal wavelet attention (TWA): temporal attention, then wavelet attention."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .blocks import conv3x3, lrelu
from .imresize import cubic


class TemporalAttention(nn.Module):
    """Weights three feature maps by their similarity to the centre one, then fuses them."""

    def __init__(self, channels: int = 64):
        super().__init__()
        self.tAtt_1 = conv3x3(channels, channels)
        self.tAtt_2 = conv3x3(channels, channels)
        self.sAtt_1 = conv3x3(3 * channels, channels)
        self.sAtt_2 = conv3x3(channels, channels)
        self.sAtt_3 = conv3x3(channels, channels)
        self.sAtt_4 = conv3x3(channels, channels)
        self.sAtt_5 = conv3x3(channels, channels)
        self.lrelu = lrelu()

    def forward(self, feats: Tensor) -> Tensor:
        """``[N, 3, C, H, W]`` (centre at index 1) -> ``[N, C, H, W]``."""
        n, t, c, h, w = feats.shape
        ref = self.tAtt_2(feats[:, 1])
        emb = self.tAtt_1(feats.reshape(n * t, c, h, w)).reshape(n, t, c, h, w)
        prob = torch.sigmoid(torch.sum(emb * ref.unsqueeze(1), dim=2, keepdim=True))
        weighted = (feats * prob).reshape(n, t * c, h, w)

        att = self.lrelu(self.sAtt_1(weighted))
        skip = att
        att = self.lrelu(self.sAtt_2(att))
        att = self.lrelu(self.sAtt_3(att))
        att = att + skip
        att = self.lrelu(self.sAtt_4(att))
        return self.lrelu(self.sAtt_5(att))


_CUBIC_A = -0.75  # PyTorch's (and OpenCV's) bicubic kernel


def _cubic_weights(t: float) -> list[float]:
    """Keys' cubic weights of the 4 taps around a sample at fraction ``t`` past the 2nd."""
    return cubic(np.array([t + 1, t, 1 - t, 2 - t]), _CUBIC_A).tolist()


def _phase_kernels() -> Tensor:
    """``[4, 1, 5, 5]`` float64: output phase ``dy * 2 + dx`` of bicubic x2 upsampling."""
    even = torch.tensor(_cubic_weights(0.75) + [0.0], dtype=torch.float64)
    odd = torch.tensor([0.0] + _cubic_weights(0.25), dtype=torch.float64)
    return torch.stack([torch.outer(ky, kx) for ky in (even, odd) for kx in (even, odd)])[:, None]


_PHASE_KERNELS = _phase_kernels()


def _upsample_bicubic_x2_as_conv(x: Tensor) -> Tensor:
    """``F.interpolate(x, scale_factor=2, mode="bicubic", align_corners=False)`` as an
    edge pad, a 5x5 convolution per output phase and a pixel shuffle.

    Exported graphs use this form: ONNX Runtime's CPU cubic ``Resize`` took half of a step
    graph's time (``benchmarks/results/graph_times.md``); convolutions run at full speed
    everywhere. Output pixel ``2k`` samples at ``k - 0.25`` (taps ``k-2..k+1``), ``2k + 1``
    at ``k + 0.25`` (taps ``k-1..k+2``); indices clamp at the borders, as the edge pad does.
    """
    n, c, h, w = x.shape
    padded = F.pad(x, (2, 2, 2, 2), mode="replicate").reshape(n * c, 1, h + 4, w + 4)
    phases = F.conv2d(padded, _PHASE_KERNELS.to(device=x.device, dtype=x.dtype))
    return F.pixel_shuffle(phases.reshape(n, c * 4, h, w), 2)


def upsample_bicubic_x2(x: Tensor) -> Tensor:
    """Bicubic x2 upsampling (PyTorch semantics); the convolution form when exporting."""
    if torch.jit.is_tracing():
        return _upsample_bicubic_x2_as_conv(x)
    return F.interpolate(x, scale_factor=2, mode="bicubic", align_corners=False)


class WaveletAttention(nn.Module):
    """Gates a feature map with each band of its one-level Haar transform."""

    def forward(self, x: Tensor) -> Tensor:
        """``[N, C, H, W]`` (H, W even) -> ``[N, 4C, H, W]`` (LL, HL, LH, HH gates)."""
        x1 = x[:, :, 0::2, 0::2] / 2
        x2 = x[:, :, 1::2, 0::2] / 2
        x3 = x[:, :, 0::2, 1::2] / 2
        x4 = x[:, :, 1::2, 1::2] / 2
        bands = (x1 + x2 + x3 + x4, -x1 - x2 + x3 + x4, -x1 + x2 - x3 + x4, x1 - x2 - x3 + x4)
        gates = [torch.sigmoid(upsample_bicubic_x2(b)) for b in bands]
        return torch.cat([x * g for g in gates], dim=1)


def temporal_wavelet_attention(channels: int = 64) -> nn.Sequential:
    """``twa.{branch}``: index 0 holds the parameters, index 1 has none."""
    return nn.Sequential(TemporalAttention(channels), WaveletAttention())
