"""Anchors (SSD prior boxes, RetinaNet anchors) and the box coder.

One module used by training (target assignment), export (constants in the graph) and the
runtime's raw-head mode, so every stage decodes boxes the same way. Boxes are in pixels of the
network input, xyxy; anchors are generated level by level, location-major then anchor-minor,
which is the order in which the heads flatten their outputs.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SSDPriorConfig:
    """SSD prior boxes per level: sizes are fractions of the input side.

    Each location gets a square of `min_size`, a square of sqrt(min_size * max_size) and, for
    every ratio r, the pair (min_size * sqrt(r), min_size / sqrt(r)) in both orientations:
    2 + 2 * len(ratios) anchors.
    """

    min_sizes: tuple[float, ...]
    max_sizes: tuple[float, ...]
    ratios: tuple[tuple[float, ...], ...]
    # Distance between prior centres per level as a fraction of the input side; None: the
    # input size over the feature-map size (MMDetection's SSD300 rounds these: 8, 16, 32, 64, 100, 300).
    strides: tuple[float, ...] | None = None

    def anchors_per_location(self) -> list[int]:
        return [2 + 2 * len(r) for r in self.ratios]


def ssdlite_priors(first_min_size: float | None = None) -> SSDPriorConfig:
    """MMDetection's SSDLite priors (defined at 320 px: min 48..304, max 100..320), as fractions;
    `first_min_size` replaces the first level's 48/320 (its max size stays 100/320)."""
    base = 320.0
    first = 48 / base if first_min_size is None else first_min_size
    return SSDPriorConfig(
        min_sizes=(first, *(s / base for s in (100, 150, 202, 253, 304))),
        max_sizes=tuple(s / base for s in (100, 150, 202, 253, 304, 320)),
        ratios=((2, 3),) * 6,
    )


def _mmdet_ssd_priors(side: int, min_ratio: int, first: tuple[int, int], levels: int,
                      ratios: tuple[tuple[float, ...], ...], strides: tuple[int, ...] | None = None) -> SSDPriorConfig:
    """MMDetection's `SSDAnchorGenerator` sizes: base size ratios from `min_ratio`% to 90% of
    the side over levels 2.., the first level's (min, max) given in %, all truncated to whole
    pixels at `side` as MMDetection does."""
    max_ratio = 90
    step = (max_ratio - min_ratio) // (levels - 2)
    steps = range(min_ratio, max_ratio + 1, step)
    mins = [int(side * first[0] / 100)] + [int(side * r / 100) for r in steps]
    maxs = [int(side * first[1] / 100)] + [int(side * (r + step) / 100) for r in steps]
    return SSDPriorConfig(
        min_sizes=tuple(m / side for m in mins),
        max_sizes=tuple(m / side for m in maxs),
        ratios=ratios,
        strides=None if strides is None else tuple(s / side for s in strides),
    )


def ssd300_priors() -> SSDPriorConfig:
    """MMDetection's SSD300 priors: base size ratio range (0.15, 0.9) over 6 levels (21, 45, 99,
    ... px), its rounded strides (8, 16, 32, 64, 100, 300 px): the 8732 priors of the SSD paper."""
    return _mmdet_ssd_priors(300, 15, (7, 15), 6, ((2,), (2, 3), (2, 3), (2, 3), (2,), (2,)),
                             strides=(8, 16, 32, 64, 100, 300))


def ssd512_priors() -> SSDPriorConfig:
    """MMDetection's SSD512 priors: base size ratio range (0.1, 0.9) over 7 levels (20, 51, 133,
    ... px); strides are the input over the feature-map size (8 .. 512)."""
    return _mmdet_ssd_priors(512, 10, (4, 10), 7, ((2,), (2, 3), (2, 3), (2, 3), (2, 3), (2,), (2,)))


def _grid_centers(feature_hw: tuple[int, int], step_hw: tuple[float, float], offset: float) -> torch.Tensor:
    """(H*W, 2) xy centres (i + offset) * step of the cells of a feature map, row-major."""
    fh, fw = feature_hw
    ys = (torch.arange(fh, dtype=torch.float64) + offset) * step_hw[0]
    xs = (torch.arange(fw, dtype=torch.float64) + offset) * step_hw[1]
    cy, cx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([cx.reshape(-1), cy.reshape(-1)], dim=1)


def _place(centers: torch.Tensor, wh: torch.Tensor) -> torch.Tensor:
    """Anchors (H*W*A, 4) xyxy from centres (H*W, 2) and sizes (A, 2)."""
    c = centers[:, None, :]
    half = wh[None, :, :] / 2
    return torch.cat([c - half, c + half], dim=2).reshape(-1, 4)


def ssd_priors(config: SSDPriorConfig, feature_hws: list[tuple[int, int]],
               image_hw: tuple[int, int]) -> torch.Tensor:
    """All SSD priors (sum_l H_l*W_l*A_l, 4), xyxy pixels, not clipped (as in MMDetection)."""
    if len(feature_hws) != len(config.min_sizes):
        raise ValueError(f"{len(feature_hws)} feature maps for {len(config.min_sizes)} prior levels")
    side = min(image_hw)
    out = []
    for level, (hw, smin, smax, ratios) in enumerate(zip(feature_hws, config.min_sizes, config.max_sizes,
                                                         config.ratios)):
        if config.strides is None:
            step = (image_hw[0] / hw[0], image_hw[1] / hw[1])
        else:
            step = (config.strides[level] * image_hw[0], config.strides[level] * image_hw[1])
        lo, big = smin * side, math.sqrt(smin * smax) * side
        sizes = [(lo, lo), (big, big)]
        for r in ratios:
            q = math.sqrt(r)
            sizes += [(lo * q, lo / q), (lo / q, lo * q)]
        out.append(_place(_grid_centers(hw, step, 0.5), torch.tensor(sizes, dtype=torch.float64)))
    return torch.cat(out).float()


def retinanet_anchors(feature_hws: list[tuple[int, int]], image_hw: tuple[int, int],
                      strides: tuple[int, ...] = (8, 16, 32, 64, 128), octave_base_scale: float = 4,
                      scales_per_octave: int = 3, ratios: tuple[float, ...] = (0.5, 1.0, 2.0)) -> torch.Tensor:
    """RetinaNet anchors (Lin et al. 2017, MMDetection 2.x defaults): 3 scales x 3 ratios per
    cell, centred at multiples of the level's stride (MMDetection's centre offset 0)."""
    out = []
    for hw, stride in zip(feature_hws, strides):
        sizes = []
        for r in ratios:
            for i in range(scales_per_octave):
                base = stride * octave_base_scale * 2 ** (i / scales_per_octave)
                sizes.append((base / math.sqrt(r), base * math.sqrt(r)))  # (w, h), h/w = r
        out.append(_place(_grid_centers(hw, (stride, stride), 0.0), torch.tensor(sizes, dtype=torch.float64)))
    return torch.cat(out).float()


@dataclass(frozen=True)
class BoxCoder:
    """SSD/Faster R-CNN delta coding of xyxy boxes against anchors, with variances.

    deltas = ((cx - acx) / aw / v0, (cy - acy) / ah / v1, log(w / aw) / v2, log(h / ah) / v3).
    """

    variances: tuple[float, float, float, float] = (0.1, 0.1, 0.2, 0.2)
    max_log_ratio: float = math.log(1000.0 / 16)

    def encode(self, boxes: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
        v = boxes.new_tensor(self.variances)
        acx, acy, aw, ah = _center_size(anchors)
        cx, cy, w, h = _center_size(boxes)
        return torch.stack([(cx - acx) / aw, (cy - acy) / ah,
                            torch.log(w / aw), torch.log(h / ah)], dim=-1) / v

    def decode(self, deltas: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
        # (x, y) and (w, h) as pairs: one concatenation in the exported graph instead of a stack of 4.
        d = deltas * deltas.new_tensor(self.variances)
        anchor_size = anchors[..., 2:] - anchors[..., :2]
        centre = anchors[..., :2] + anchor_size / 2 + d[..., :2] * anchor_size
        half = anchor_size * torch.exp(d[..., 2:].clamp(max=self.max_log_ratio)) / 2
        return torch.cat([centre - half, centre + half], dim=-1)


def _center_size(boxes: torch.Tensor) -> tuple[torch.Tensor, ...]:
    w = boxes[..., 2] - boxes[..., 0]
    h = boxes[..., 3] - boxes[..., 1]
    return boxes[..., 0] + w / 2, boxes[..., 1] + h / 2, w, h
