"""Temporal wavelet attention (TWA): temporal attention, then wavelet attention."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .blocks import conv3x3, lrelu


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


class WaveletAttention(nn.Module):
    """Gates a feature map with each band of its one-level Haar transform."""

    def forward(self, x: Tensor) -> Tensor:
        """``[N, C, H, W]`` (H, W even) -> ``[N, 4C, H, W]`` (LL, HL, LH, HH gates)."""
        x1 = x[:, :, 0::2, 0::2] / 2
        x2 = x[:, :, 1::2, 0::2] / 2
        x3 = x[:, :, 0::2, 1::2] / 2
        x4 = x[:, :, 1::2, 1::2] / 2
        bands = (x1 + x2 + x3 + x4, -x1 - x2 + x3 + x4, -x1 + x2 - x3 + x4, x1 - x2 - x3 + x4)
        gates = [torch.sigmoid(F.interpolate(b, scale_factor=2, mode="bicubic",
                                             align_corners=False)) for b in bands]
        return torch.cat([x * g for g in gates], dim=1)


def temporal_wavelet_attention(channels: int = 64) -> nn.Sequential:
    """``twa.{branch}``: index 0 holds the parameters, index 1 has none."""
    return nn.Sequential(TemporalAttention(channels), WaveletAttention())
