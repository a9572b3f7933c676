"""Where the detector's mask comes from, for training and evaluation alike (paper Table 2).

Sources: `omg` (the model's own OMG), `none` (no black-out), `gt-instance` and `gt-box`
(ground-truth masks of the batch), `sr` (spectral-residual saliency, threshold 0.08) and
`random:<fg-ratio>` (salt-and-pepper at that FG-ratio).
"""
from __future__ import annotations

import torch

from babo_edge.models.blackout import random_mask, spectral_residual_mask
from babo_edge.models.detector import BABODetector
from babo_edge.train.data import Batch

FIXED_SOURCES = ("gt-instance", "gt-box", "sr", "random:<fg-ratio>")


def check_source(source: str) -> str:
    if source in ("omg", "none", "gt-instance", "gt-box", "sr"):
        return source
    if source.startswith("random:"):
        try:
            ratio = float(source.split(":", 1)[1])
        except ValueError:
            ratio = -1.0
        if 0 <= ratio <= 1:
            return source
    raise ValueError(f"unknown mask source {source!r}; expected omg, none, gt-instance, gt-box, sr "
                     "or random:<fg-ratio in 0..1>")


def external_mask(source: str, batch: Batch, model: BABODetector,
                  generator: torch.Generator | None = None) -> torch.Tensor | None:
    """The mask to pass to `model(images, mask)`: None lets the model use its OMG (or run
    vanilla when it has none); `none` on a model with an OMG passes an all-ones mask."""
    check_source(source)
    if source == "omg":
        if model.omg is None:
            raise ValueError("mask source 'omg' needs a model with an OMG")
        return None
    if source == "none":
        return None if model.omg is None else torch.ones_like(batch.instance_masks)
    if source == "gt-instance":
        return batch.instance_masks
    if source == "gt-box":
        return batch.box_masks
    if source == "sr":
        return spectral_residual_mask(batch.images)
    ratio = float(source.split(":", 1)[1])
    return random_mask(tuple(batch.instance_masks.shape), ratio, generator)
