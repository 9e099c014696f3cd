"""Convolution building blocks of HiRN, named as in the published checkpoints."""

from __future__ import annotations

from torch import Tensor, nn


def conv3x3(in_channels: int, out_channels: int) -> nn.Conv2d:
    """3x3 convolution, stride 1, padding 1, with bias."""
    return nn.Conv2d(in_channels, out_channels, 3, 1, 1, bias=True)


def lrelu() -> nn.LeakyReLU:
    return nn.LeakyReLU(negative_slope=0.1, inplace=True)


class ResBlock(nn.Module):
    """``x + conv2(relu(conv1(x)))``: a residual block without scaling or BN."""

    def __init__(self, channels: int = 64):
        super().__init__()
        self.conv1 = conv3x3(channels, channels)
        self.conv2 = conv3x3(channels, channels)
        self.relu = nn.ReLU(inplace=True)
        # Small residuals at the start of training (Kaiming fan-in, scaled 0.1).
        for conv in (self.conv1, self.conv2):
            nn.init.kaiming_normal_(conv.weight, a=0, mode="fan_in")
            conv.weight.data.mul_(0.1)
            nn.init.zeros_(conv.bias)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv2(self.relu(self.conv1(x)))


class ResStack(nn.Module):
    """Conv, leaky ReLU, then ``num_blocks`` residual blocks.

    Its only child is the Sequential ``main`` so that keys read
    ``main.2.3.conv1.weight`` as in the checkpoints.
    """

    def __init__(self, in_channels: int, out_channels: int, num_blocks: int):
        super().__init__()
        self.main = nn.Sequential(
            conv3x3(in_channels, out_channels),
            lrelu(),
            nn.Sequential(*(ResBlock(out_channels) for _ in range(num_blocks))),
        )

    def forward(self, x: Tensor) -> Tensor:
        """``[N, in, H, W] -> [N, out, H, W]``."""
        return self.main(x)
