"""RetinaNet with ResNet-101-FPN as MMDetection 2.x defines it (retinanet_r101_fpn_1x_coco),
in plain torch.nn.

ResNet (He et al. 2016), pytorch style (stride on the 3x3 conv of the bottleneck); FPN with
start_level 1 and add_extra_convs='on_input' (P6 from C5, P7 from P6); the RetinaHead shared
by all levels. Like MMDetection's config (relu_before_extra_convs is left False), P7 is
computed from P6 without a ReLU in between; the RetinaNet paper and torchvision put one there.

Names give per-block reports readable groups: `backbone.stem`, `backbone.layer3.17` (one
bottleneck), `neck.lateral_convs`, `neck.output_convs`, `neck.extra_convs` (P6, P7),
`head.cls_branch`, `head.box_branch`.
State-dict keys differ from MMDetection's; loading its checkpoints needs a key map.
"""
from __future__ import annotations

import math
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from babo_edge.models.layers import ConvNormAct
from babo_edge.models.ssd import flatten_levels

RESNET101_BLOCKS = (3, 4, 23, 3)
BOTTLENECK_EXPANSION = 4


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (carries the stride), 1x1 expand, each with BN; ReLU after the sum.
    The shortcut is a strided 1x1 conv + BN whenever the shape changes."""

    def __init__(self, in_channels: int, width: int, stride: int):
        super().__init__()
        out_channels = width * BOTTLENECK_EXPANSION
        self.reduce = ConvNormAct(in_channels, width, 1, activation=nn.ReLU)
        self.conv = ConvNormAct(width, width, 3, stride, activation=nn.ReLU)
        self.expand = ConvNormAct(width, out_channels, 1, activation=None)
        self.downsample = (ConvNormAct(in_channels, out_channels, 1, stride, activation=None)
                           if stride != 1 or in_channels != out_channels else nn.Identity())
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.expand(self.conv(self.reduce(x))) + self.downsample(x))


class ResNet(nn.Module):
    """Bottleneck ResNet without the classifier; returns C2..C5 (strides 4..32)."""

    def __init__(self, blocks_per_stage: tuple[int, ...] = RESNET101_BLOCKS):
        super().__init__()
        self.stem = nn.Sequential(OrderedDict(
            conv=nn.Conv2d(3, 64, 7, 2, padding=3, bias=False),
            bn=nn.BatchNorm2d(64),
            relu=nn.ReLU(inplace=True),
            pool=nn.MaxPool2d(3, 2, padding=1),
        ))
        in_channels = 64
        self.stage_names: list[str] = []
        self.out_channels: list[int] = []
        for index, blocks in enumerate(blocks_per_stage):
            width = 64 * 2 ** index
            stride = 1 if index == 0 else 2
            stage = []
            for i in range(blocks):
                stage.append(Bottleneck(in_channels, width, stride if i == 0 else 1))
                in_channels = width * BOTTLENECK_EXPANSION
            self.stage_names.append(f"layer{index + 1}")
            self.add_module(self.stage_names[-1], nn.Sequential(*stage))
            self.out_channels.append(in_channels)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x)
        features = []
        for name in self.stage_names:
            x = getattr(self, name)(x)
            features.append(x)
        return features


class FPN(nn.Module):
    """FPN over C3..C5 plus P6 = 3x3/2 conv on C5 and P7 = 3x3/2 conv on P6 (no norm, no
    activation anywhere, convs with bias).

    The top-down path upsamples (nearest) to the size of the lateral below, not by a factor
    2, so odd sizes (e.g. 25x38 -> 13x19 at 800x1216) still add up.
    """

    def __init__(self, in_channels: tuple[int, ...], out_channels: int = 256, start_level: int = 1):
        super().__init__()
        self.start_level = start_level
        used = in_channels[start_level:]
        self.lateral_convs = nn.ModuleList(nn.Conv2d(c, out_channels, 1) for c in used)
        self.output_convs = nn.ModuleList(nn.Conv2d(out_channels, out_channels, 3, padding=1)
                                          for _ in used)
        self.extra_convs = nn.ModuleDict({
            "p6": nn.Conv2d(used[-1], out_channels, 3, 2, padding=1),
            "p7": nn.Conv2d(out_channels, out_channels, 3, 2, padding=1),
        })

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        inputs = features[self.start_level:]
        laterals = [conv(f) for conv, f in zip(self.lateral_convs, inputs)]
        for i in range(len(laterals) - 1, 0, -1):
            laterals[i - 1] = laterals[i - 1] + F.interpolate(
                laterals[i], size=laterals[i - 1].shape[-2:], mode="nearest")
        outputs = [conv(lateral) for conv, lateral in zip(self.output_convs, laterals)]
        p6 = self.extra_convs["p6"](inputs[-1])
        return [*outputs, p6, self.extra_convs["p7"](p6)]


def _head_branch(channels: int, out_channels: int, stacked_convs: int) -> nn.Sequential:
    """`stacked_convs` 3x3 conv + ReLU, then the 3x3 predictor; named (not numbered) layers
    make the whole branch one block in reports."""
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    for i in range(1, stacked_convs + 1):
        layers[f"conv{i}"] = nn.Conv2d(channels, channels, 3, padding=1)
        layers[f"relu{i}"] = nn.ReLU(inplace=True)
    layers["predict"] = nn.Conv2d(channels, out_channels, 3, padding=1)
    return nn.Sequential(layers)


class RetinaHead(nn.Module):
    """Class and box subnets (Lin et al. 2017, Fig. 3), the same weights on every level.

    Each conv therefore runs once per pyramid level: per-call accounting (hooks) sees it
    five times, with five input sizes.
    """

    def __init__(self, num_classes: int, anchors_per_location: int = 9, channels: int = 256,
                 stacked_convs: int = 4):
        super().__init__()
        self.num_classes = num_classes
        self.cls_branch = _head_branch(channels, anchors_per_location * num_classes, stacked_convs)
        self.box_branch = _head_branch(channels, anchors_per_location * 4, stacked_convs)
        self._init_as_focal_loss_paper(prior_probability=0.01)

    def _init_as_focal_loss_paper(self, prior_probability: float) -> None:
        """Gaussian(0, 0.01) weights, zero biases, and a class bias that makes every anchor
        start at `prior_probability` foreground, so the focal loss does not diverge early."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, std=0.01)
                nn.init.zeros_(module.bias)
        nn.init.constant_(self.cls_branch.predict.bias,
                          -math.log((1 - prior_probability) / prior_probability))

    def forward(self, features: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        cls = flatten_levels([self.cls_branch(f) for f in features], self.num_classes)
        box = flatten_levels([self.box_branch(f) for f in features], 4)
        return cls, box
