"""Small building blocks shared by every network of the package."""
from __future__ import annotations

from torch import nn


def make_divisible(value: float, divisor: int = 8) -> int:
    """Channel rounding of MobileNetV2 (never more than 10% below the unrounded value)."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


class ConvNormAct(nn.Sequential):
    """Conv2d (no bias) + BatchNorm2d + activation, with 'same' padding for odd kernels."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
                 groups: int = 1, dilation: int = 1, activation: type[nn.Module] | None = nn.ReLU6):
        padding = (kernel_size - 1) // 2 * dilation
        layers = [
            nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, dilation=dilation,
                      groups=groups, bias=False),
            nn.BatchNorm2d(out_channels),
        ]
        if activation is not None:
            layers.append(activation(inplace=True))
        super().__init__(*layers)


def depthwise_separable(in_channels: int, out_channels: int, stride: int = 1,
                        activation: type[nn.Module] = nn.ReLU6) -> nn.Sequential:
    """Depthwise 3x3 + BN + act, then pointwise 1x1 + BN + act (MobileNet / Fast-SCNN DSConv)."""
    return nn.Sequential(
        ConvNormAct(in_channels, in_channels, 3, stride, groups=in_channels, activation=activation),
        ConvNormAct(in_channels, out_channels, 1, activation=activation),
    )
