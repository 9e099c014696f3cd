"""Second-order flow-guided deformable alignment."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .blocks import conv3x3, lrelu
from .deform_conv import deform_conv2d


class SecondOrderDeformableAlignment(nn.Module):
    """Align two earlier features to the current frame (DCNv2, 16 groups).

    Parameters are the deformable conv's ``weight`` / ``bias`` and
    ``conv_offset``, which predicts residual offsets around the two flows
    and the modulation mask from the warped features.
    """

    def __init__(self, channels: int = 64, deform_groups: int = 16,
                 max_residue_magnitude: float = 10.0):
        super().__init__()
        self.deform_groups = deform_groups
        self.max_residue_magnitude = max_residue_magnitude
        self.weight = nn.Parameter(torch.empty(channels, 2 * channels, 3, 3))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.conv_offset = nn.Sequential(
            conv3x3(3 * channels + 4, channels), lrelu(),
            conv3x3(channels, channels), lrelu(),
            conv3x3(channels, channels), lrelu(),
            conv3x3(channels, 27 * deform_groups),
        )
        bound = 1.0 / math.sqrt(2 * channels * 9)
        nn.init.uniform_(self.weight, -bound, bound)
        # Zero offsets and a mask of 0.5 at start: alignment follows the flows.
        nn.init.zeros_(self.conv_offset[-1].weight)
        nn.init.zeros_(self.conv_offset[-1].bias)

    def forward(self, feat: Tensor, cond: Tensor, flow_1: Tensor, flow_2: Tensor) -> Tensor:
        """Align ``feat`` guided by ``cond`` and the two flows.

        Args:
            feat: ``[N, 2C, H, W]``, the two earlier features concatenated.
            cond: ``[N, 3C, H, W]``, their warped versions around the current
                feature (``cat[warped_1, current, warped_2]``).
            flow_1, flow_2: ``[N, 2, H, W]`` flows (x, y) to the two features.

        Returns:
            ``[N, C, H, W]``.
        """
        out = self.conv_offset(torch.cat([cond, flow_1.to(cond.dtype), flow_2.to(cond.dtype)],
                                         dim=1))
        o1, o2, mask = torch.chunk(out, 3, dim=1)
        offset = self.max_residue_magnitude * torch.tanh(torch.cat((o1, o2), dim=1))
        # Offsets are (y, x) pairs: the flows enter with channels swapped.
        repeats = offset.size(1) // 4
        o1, o2 = torch.chunk(offset.to(flow_1.dtype), 2, dim=1)
        o1 = o1 + flow_1.flip(1).repeat(1, repeats, 1, 1)
        o2 = o2 + flow_2.flip(1).repeat(1, repeats, 1, 1)
        offset = torch.cat([o1, o2], dim=1)
        return deform_conv2d(feat, offset, self.weight, self.bias, stride=1, padding=1,
                             dilation=1, mask=torch.sigmoid(mask))
