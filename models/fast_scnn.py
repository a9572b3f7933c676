"""Fast-SCNN (Poudel et al., BMVC 2019), the objectness mask generator (OMG) of BABO.

As published (Table 1 of the Fast-SCNN paper): learning to downsample (conv 32/2, DSConv 48/2,
DSConv 64/2), global feature extractor (bottlenecks t=6: 64x3/2, 96x3/2, 128x3/1, pyramid
pooling 1-2-3-6), feature fusion (upsampled low-res path with a depthwise 3x3 of dilation 4,
1x1 convs on both paths, add, ReLU) and classifier (2 DSConv 128, 1x1 conv to the classes).
Upsampling is to a target size, never a fixed factor, so any input size works; the adaptive
average pooling of the pyramid is written as two matrix products so it exports to ONNX for
bin counts that do not divide the feature size.
"""
from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from babo_edge.models.blackout import static_hw
from babo_edge.models.layers import ConvNormAct, depthwise_separable
from babo_edge.models.mobilenetv2 import InvertedResidual


@functools.lru_cache(maxsize=64)
def _pool_matrix(size: int, bins: int) -> np.ndarray:
    m = np.zeros((bins, size), np.float32)
    for i in range(bins):
        start, end = (i * size) // bins, -(-((i + 1) * size) // bins)
        m[i, start:end] = 1.0 / (end - start)
    return m


def adaptive_avg_pool_matrix(size: int, bins: int) -> torch.Tensor:
    """(bins, size) averaging matrix with the bin edges of torch's adaptive_avg_pool. Built in
    numpy from a static size, so an exported graph holds it as a constant."""
    return torch.from_numpy(_pool_matrix(int(size), bins))


class PyramidPooling(nn.Module):
    def __init__(self, channels: int, out_channels: int, bins: tuple[int, ...] = (1, 2, 3, 6)):
        super().__init__()
        self.bins = bins
        self.branches = nn.ModuleList(ConvNormAct(channels, channels // 4, 1, activation=nn.ReLU)
                                      for _ in bins)
        self.project = ConvNormAct(channels + len(bins) * (channels // 4), out_channels, 1,
                                   activation=nn.ReLU)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = static_hw(x.shape)
        outs = [x]
        for bins, branch in zip(self.bins, self.branches):
            ph = adaptive_avg_pool_matrix(h, bins).to(x)
            pw = adaptive_avg_pool_matrix(w, bins).to(x)
            pooled = ph @ x @ pw.t()
            outs.append(F.interpolate(branch(pooled), size=(h, w), mode="bilinear", align_corners=True))
        return self.project(torch.cat(outs, dim=1))


class FeatureFusion(nn.Module):
    def __init__(self, high_channels: int, low_channels: int, out_channels: int, dilation: int = 4):
        super().__init__()
        self.low_depthwise = ConvNormAct(low_channels, out_channels, 3, groups=low_channels,
                                         dilation=dilation, activation=nn.ReLU)
        self.low_project = ConvNormAct(out_channels, out_channels, 1, activation=None)
        self.high_project = ConvNormAct(high_channels, out_channels, 1, activation=None)

    def forward(self, high: torch.Tensor, low: torch.Tensor) -> torch.Tensor:
        low = F.interpolate(low, size=high.shape[-2:], mode="bilinear", align_corners=True)
        return F.relu(self.high_project(high) + self.low_project(self.low_depthwise(low)))


class FastSCNN(nn.Module):
    """Fast-SCNN returning class logits at `output_size` (the input size by default).

    `foreground_bias` initialises the last conv's bias of class 1 (foreground): an untrained
    OMG then keeps (almost) everything, so joint training starts as the vanilla detector and
    learns to black out, instead of starting blind on a random mask.
    """

    def __init__(self, num_classes: int = 2, foreground_bias: float = 0.0):
        super().__init__()
        self.learning_to_downsample = nn.Sequential(
            ConvNormAct(3, 32, 3, 2, activation=nn.ReLU),
            depthwise_separable(32, 48, 2, activation=nn.ReLU),
            depthwise_separable(48, 64, 2, activation=nn.ReLU),
        )
        stages, channels = [], 64
        for c, n, s in ((64, 3, 2), (96, 3, 2), (128, 3, 1)):
            stages.append(nn.Sequential(*[InvertedResidual(channels if i == 0 else c, c, s if i == 0 else 1, 6,
                                                           activation=nn.ReLU) for i in range(n)]))
            channels = c
        self.global_features = nn.Sequential(*stages, PyramidPooling(128, 128))
        self.feature_fusion = FeatureFusion(64, 128, 128)
        self.classifier = nn.Sequential(
            depthwise_separable(128, 128, activation=nn.ReLU),
            depthwise_separable(128, 128, activation=nn.ReLU),
            nn.Dropout(0.1),
            nn.Conv2d(128, num_classes, 1),
        )
        with torch.no_grad():
            self.classifier[-1].bias[1:] += foreground_bias

    def forward(self, x: torch.Tensor, output_size: tuple[int, int] | None = None) -> torch.Tensor:
        high = self.learning_to_downsample(x)
        fused = self.feature_fusion(high, self.global_features(high))
        logits = self.classifier(fused)
        return F.interpolate(logits, size=output_size or x.shape[-2:], mode="bilinear", align_corners=False)
