"""VGG16-SSD300 and VGG16-SSD512 as MMDetection 2.x defines them (configs/ssd/ssd300_coco.py,
ssd512_coco.py), in plain torch.nn.

Backbone = MMDetection's `SSDVGG` (depth 16, ceil-mode pools, no pool after conv5, then
pool5 3x3/1, dilated fc6 and 1x1 fc7); neck = `SSDNeck` (L2Norm on conv4_3 and four extra
levels for 300, five for 512); the head is `models.ssd.SSDHead` with plain 3x3 predictors.
A width multiplier (1.0 = the published network) scales every trunk and neck channel, for a
VGG16-SSD narrow enough to train on a CPU.

Layers are named after the VGG paper (block1..block5 holding conv1_1..conv5_3, then fc) so
that per-block reports read `backbone.block4`, `backbone.fc`, `neck.extra_levels.0`, ...
State-dict keys therefore differ from MMDetection's `features.N`; loading its checkpoints
needs a key map.
"""
from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

# Convs per VGG16 block and their width (Simonyan & Zisserman, configuration D).
VGG16_BLOCKS = ((2, 64), (2, 128), (3, 256), (3, 512), (3, 512))
# SSDNeck of ssd300_coco.py / ssd512_coco.py: (channels, stride, padding, kernel) of every extra
# level's 2nd conv.
SSD300_EXTRA_LEVELS = ((512, 2, 1, 3), (256, 2, 1, 3), (256, 1, 0, 3), (256, 1, 0, 3))
SSD512_EXTRA_LEVELS = ((512, 2, 1, 3), (256, 2, 1, 3), (256, 2, 1, 3), (256, 2, 1, 3), (256, 1, 1, 4))


def scaled_channels(channels: int, width: float) -> int:
    """`channels` x `width`, rounded to a multiple of 8 (at least 8), as MobileNet's builders do."""
    return channels if width == 1.0 else max(8, int(channels * width / 8 + 0.5) * 8)


def scaled_extra_levels(levels: tuple[tuple[int, int, int, int], ...],
                        width: float) -> tuple[tuple[int, int, int, int], ...]:
    return tuple((scaled_channels(c, width), stride, pad, kernel) for c, stride, pad, kernel in levels)


def _vgg_block(index: int, in_channels: int, out_channels: int, convs: int, batch_norm: bool) -> nn.Sequential:
    """convK_1..convK_n (3x3, pad 1, bias) [+ BN] + ReLU; blocks after the first start with the
    previous block's 2x2 ceil-mode max-pool, so a block's output is the tap SSD needs."""
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    if index > 1:
        layers[f"pool{index - 1}"] = nn.MaxPool2d(2, 2, ceil_mode=True)
    for i in range(1, convs + 1):
        layers[f"conv{index}_{i}"] = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        if batch_norm:
            layers[f"bn{index}_{i}"] = nn.BatchNorm2d(out_channels)
        layers[f"relu{index}_{i}"] = nn.ReLU(inplace=True)
        in_channels = out_channels
    return nn.Sequential(layers)


class SSDVGG16(nn.Module):
    """VGG16 trunk of SSD: returns conv4_3 (after ReLU, stride 8) and fc7 (stride 16).
    `batch_norm`: a BN after every conv (torchvision's vgg16_bn layout, fc6/fc7 included), which
    training from scratch needs (ScratchDet, Zhu et al. 2019); the published SSD has none."""

    def __init__(self, width: float = 1.0, batch_norm: bool = False):
        super().__init__()
        in_channels = 3
        for index, (convs, channels) in enumerate(VGG16_BLOCKS, start=1):
            channels = scaled_channels(channels, width)
            setattr(self, f"block{index}", _vgg_block(index, in_channels, channels, convs, batch_norm))
            in_channels = channels
        fc = scaled_channels(1024, width)
        self.out_channels = (in_channels, fc)
        layers: OrderedDict[str, nn.Module] = OrderedDict(pool5=nn.MaxPool2d(3, 1, padding=1))
        for name, conv in (("6", nn.Conv2d(in_channels, fc, 3, padding=6, dilation=6)), ("7", nn.Conv2d(fc, fc, 1))):
            layers[f"fc{name}"] = conv
            if batch_norm:
                layers[f"bn{name}"] = nn.BatchNorm2d(fc)
            layers[f"relu{name}"] = nn.ReLU(inplace=True)
        self.fc = nn.Sequential(layers)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        conv4_3 = self.block4(self.block3(self.block2(self.block1(x))))
        return [conv4_3, self.fc(self.block5(conv4_3))]


class L2Norm(nn.Module):
    """Channel-wise L2 normalisation with a learnable per-channel scale (ParseNet), which SSD
    puts on conv4_3 because its activations are much larger than the deeper ones."""

    def __init__(self, channels: int, scale: float = 20.0, eps: float = 1e-10):
        super().__init__()
        self.weight = nn.Parameter(torch.full((channels,), scale))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        norm = x.pow(2).sum(dim=1, keepdim=True).sqrt() + self.eps
        return self.weight.view(1, -1, 1, 1) * x / norm


class SSDNeck(nn.Module):
    """L2Norm on the first backbone map, then extra levels on the last one: each level is a
    1x1 conv to half its channels and a (channels, stride, padding, kernel) conv, both with
    bias and ReLU, no norm (`batch_norm`: a BN after each conv, as the trunk's)."""

    def __init__(self, in_channels: tuple[int, ...], extra_levels: tuple[tuple[int, int, int, int], ...],
                 batch_norm: bool = False):
        super().__init__()
        self.out_channels = (*in_channels, *(level[0] for level in extra_levels))
        self.l2_norm = L2Norm(in_channels[0])
        levels = []
        channels = in_channels[-1]
        for out_channels, stride, padding, kernel in extra_levels:
            half = out_channels // 2
            layers: list[nn.Module] = []
            for conv in (nn.Conv2d(channels, half, 1), nn.Conv2d(half, out_channels, kernel, stride, padding)):
                layers += [conv, *([nn.BatchNorm2d(conv.out_channels)] if batch_norm else []), nn.ReLU(inplace=True)]
            levels.append(nn.Sequential(*layers))
            channels = out_channels
        self.extra_levels = nn.ModuleList(levels)

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        out = [self.l2_norm(features[0]), *features[1:]]
        x = features[-1]
        for level in self.extra_levels:
            x = level(x)
            out.append(x)
        return out
