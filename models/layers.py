"""Small building blocks shared by every network of the package."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def make_divisible(value: float, divisor: int = 8) -> int:
    """Channel rounding of MobileNetV2 (never more than 10% below the unrounded value)."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


def resize_bilinear(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """`F.interpolate(x, size, mode="bilinear", align_corners=False)`, computed as a strided
    average when every side shrinks by an integer factor k: output i then samples input
    k*i + (k-1)/2, the mean of pixels k*i + k/2 - 1 and k*i + k/2 for even k, pixel k*i + (k-1)/2
    for odd k. The deployed OMG then runs one cheap AvgPool instead of an Interpolate on the full
    frame (benchmarks/README.md); equal up to float rounding (the 2x2 mean sums four values at once)."""
    (in_h, in_w), (out_h, out_w) = (int(side) for side in x.shape[-2:]), size  # static sides, also when exported with a dynamic batch
    if in_h % out_h or in_w % out_w:
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False)
    factors = (in_h // out_h, in_w // out_w)
    if factors == (1, 1):
        return x
    kernel = tuple(2 if k % 2 == 0 else 1 for k in factors)
    first = tuple((k - 1) // 2 for k in factors)  # k/2 - 1 (even), (k-1)/2 (odd)
    x = x[..., first[0]:, first[1]:]
    return F.avg_pool2d(x, kernel, stride=factors)


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
