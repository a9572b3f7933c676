"""MobileNetV2 (Sandler et al., CVPR 2018), written here because torchvision is not available.

Layer naming follows the paper's table 2: `stem`, `stage1`..`stage7` (bottleneck sequences),
`head_conv` (the final 1x1 conv to 1280), so that per-block reports read like the paper's Fig. 5.
"""
from __future__ import annotations

import torch
from torch import nn

from babo_edge.models.layers import ConvNormAct, make_divisible

# (expansion t, output channels c, repeats n, first stride s) of the paper's table 2.
BOTTLENECK_SETTINGS = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


class InvertedResidual(nn.Module):
    """Bottleneck: 1x1 expansion (skipped for t=1), depthwise 3x3, linear 1x1 projection."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, expansion: int,
                 activation: type[nn.Module] = nn.ReLU6, hidden: int | None = None,
                 residual: bool | None = None):
        """`hidden` overrides in_channels * expansion and `residual` the shortcut rule (channel
        pruning: pruned widths must not add or drop a shortcut); for t=1 the hidden channels
        are the block's input, so they cannot differ from it."""
        super().__init__()
        hidden = in_channels * expansion if hidden is None else hidden
        if expansion == 1 and hidden != in_channels:
            raise ValueError(f"a t=1 block has no expansion: hidden {hidden} != input {in_channels}")
        self.use_residual = stride == 1 and in_channels == out_channels if residual is None else residual
        self.expand = (ConvNormAct(in_channels, hidden, 1, activation=activation)
                       if expansion != 1 else nn.Identity())
        self.depthwise = ConvNormAct(hidden, hidden, 3, stride, groups=hidden, activation=activation)
        self.project = ConvNormAct(hidden, out_channels, 1, activation=None)
        self.out_channels = out_channels
        self.hidden_channels = hidden

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_from_expansion(x, self.expand(x))

    def forward_from_expansion(self, x: torch.Tensor, expanded: torch.Tensor) -> torch.Tensor:
        """Finish the block from its expansion output (SSDLite taps that tensor)."""
        out = self.project(self.depthwise(expanded))
        return x + out if self.use_residual else out


class MobileNetV2(nn.Module):
    """MobileNetV2 feature extractor (no classifier).

    `width` scales every layer but the final 1x1 conv, which stays 1280 for widths below 1,
    as in the paper ("we do not apply width multiplier to the last conv layer").
    Channel pruning (models/pruning.py) sets `hidden_widths` (one per block, execution order;
    None = t * input), `stage_widths` (each stage's output, the residual stream of its blocks)
    and `last_width` (the final 1x1 conv's); with stage widths the shortcuts stay those of the
    unpruned network.
    """

    def __init__(self, width: float = 1.0, hidden_widths: list[int] | None = None,
                 stage_widths: list[int] | None = None, last_width: int | None = None):
        super().__init__()
        channels = make_divisible(32 * width)
        blocks_total = sum(n for _, _, n, _ in BOTTLENECK_SETTINGS)
        if hidden_widths is not None and len(hidden_widths) != blocks_total:
            raise ValueError(f"{len(hidden_widths)} hidden widths for {blocks_total} blocks")
        if stage_widths is not None and len(stage_widths) != len(BOTTLENECK_SETTINGS):
            raise ValueError(f"{len(stage_widths)} stage widths for {len(BOTTLENECK_SETTINGS)} stages")
        if hidden_widths is not None and BOTTLENECK_SETTINGS[0][0] == 1:
            channels = hidden_widths[0]  # the t=1 block's hidden channels are the stem output
        self.stem = ConvNormAct(3, channels, 3, 2)
        hidden_iter = iter(hidden_widths or [None] * blocks_total)
        published_in = make_divisible(32 * width)
        stages = []
        for index, (t, c, n, s) in enumerate(BOTTLENECK_SETTINGS):
            published_out = make_divisible(c * width)
            out = published_out if stage_widths is None else stage_widths[index]
            blocks = []
            for i in range(n):
                stride = s if i == 0 else 1
                # Widths from before stage pruning (no stage_widths) keep the equal-width rule
                # they were trained with: it gave block 0 a shortcut once its stem was pruned
                # to the block's output width.
                residual = None if stage_widths is None else stride == 1 and published_in == published_out
                blocks.append(InvertedResidual(channels, out, stride, t, hidden=next(hidden_iter), residual=residual))
                channels, published_in = out, published_out
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.ModuleList(stages)
        self.last_channels = last_width or make_divisible(1280 * max(1.0, width))
        self.head_conv = ConvNormAct(channels, self.last_channels, 1)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Returns the two SSDLite taps: the expansion output of the first block of the
        stride-32 stage (output stride 16) and the final 1x1 conv output (output stride 32)."""
        x = self.stem(x)
        for stage in self.stages[:5]:
            x = stage(x)
        first_block, *rest = self.stages[5]
        expanded = first_block.expand(x)
        x = first_block.forward_from_expansion(x, expanded)
        for block in rest:
            x = block(x)
        x = self.stages[6](x)
        return [expanded, self.head_conv(x)]

    @property
    def tap_channels(self) -> tuple[int, int]:
        return self.stages[5][0].hidden_channels, self.last_channels
