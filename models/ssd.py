"""SSD building blocks: the SSDLite extra layers and the SSD/SSDLite prediction head."""
from __future__ import annotations

import torch
from torch import nn

from babo_edge.models.layers import ConvNormAct


class SSDLiteExtras(nn.Module):
    """Extra feature levels of SSDLite (MobileNetV2 paper, section 6.2).

    Each level: 1x1 conv to half the level's depth, depthwise 3x3 stride 2, 1x1 conv to the
    level's depth, every conv followed by BN + ReLU6. `halves` overrides the middle widths
    (channel pruning; None = depth // 2).
    """

    def __init__(self, in_channels: int, depths: tuple[int, ...], halves: list[int] | None = None):
        super().__init__()
        if halves is not None and len(halves) != len(depths):
            raise ValueError(f"{len(halves)} extra widths for {len(depths)} levels")
        levels = []
        for depth, half in zip(depths, halves or [d // 2 for d in depths]):
            levels.append(nn.Sequential(
                ConvNormAct(in_channels, half, 1),
                ConvNormAct(half, half, 3, 2, groups=half),
                ConvNormAct(half, depth, 1),
            ))
            in_channels = depth
        self.levels = nn.ModuleList(levels)

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        x = features[-1]
        out = list(features)
        for level in self.levels:
            x = level(x)
            out.append(x)
        return out


def _predictor(in_channels: int, out_channels: int, depthwise: bool) -> nn.Module:
    """SSDLite: depthwise 3x3 + BN + ReLU6 then 1x1 conv; SSD: one 3x3 conv."""
    if depthwise:
        return nn.Sequential(ConvNormAct(in_channels, in_channels, 3, groups=in_channels),
                             nn.Conv2d(in_channels, out_channels, 1))
    return nn.Conv2d(in_channels, out_channels, 3, padding=1)


def flatten_levels(outputs: list[torch.Tensor], values_per_anchor: int) -> torch.Tensor:
    """(N, A*K, H, W) per level -> (N, sum H*W*A, K): location-major, anchor-minor."""
    n = outputs[0].shape[0]
    return torch.cat([o.permute(0, 2, 3, 1).reshape(n, -1, values_per_anchor) for o in outputs], dim=1)


class SSDHead(nn.Module):
    """Separate class and box branches per level (SSD; SSDLite when depthwise)."""

    def __init__(self, in_channels: tuple[int, ...], anchors_per_location: list[int],
                 num_outputs: int, depthwise: bool):
        super().__init__()
        self.num_outputs = num_outputs
        self.cls = nn.ModuleList(_predictor(c, a * num_outputs, depthwise)
                                 for c, a in zip(in_channels, anchors_per_location))
        self.box = nn.ModuleList(_predictor(c, a * 4, depthwise)
                                 for c, a in zip(in_channels, anchors_per_location))

    def forward(self, features: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        cls = flatten_levels([m(f) for m, f in zip(self.cls, features)], self.num_outputs)
        box = flatten_levels([m(f) for m, f in zip(self.box, features)], 4)
        return cls, box
