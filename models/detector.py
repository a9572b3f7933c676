"""The single-shot detector (backbone -> neck -> head) and the BABO model around it."""
from __future__ import annotations

from typing import Callable, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from babo_edge.models.anchors import BoxCoder
from babo_edge.models.blackout import ConvInputBlackout, binarize
from babo_edge.models.postprocess import PostprocessConfig, detect

AnchorFn = Callable[[list[tuple[int, int]], tuple[int, int]], torch.Tensor]


class SingleShotDetector(nn.Module):
    """Backbone + neck + head with the anchors that match its feature maps.

    forward returns raw outputs: class logits (N, A, C'), box deltas (N, A, 4), anchors (A, 4)
    and the feature-map sizes of the levels. Anchors depend only on the feature-map and input
    sizes and are cached per size (constants in an exported graph).
    """

    def __init__(self, backbone: nn.Module, neck: nn.Module, head: nn.Module, anchor_fn: AnchorFn,
                 coder: BoxCoder, score_activation: str, num_classes: int, anchors_per_location: list[int]):
        super().__init__()
        self.anchors_per_location = list(anchors_per_location)
        self.backbone = backbone
        self.neck = neck
        self.head = head
        self.anchor_fn = anchor_fn
        self.coder = coder
        self.score_activation = score_activation
        self.num_classes = num_classes
        self._anchor_cache: dict[tuple, torch.Tensor] = {}

    def anchors(self, feature_hws: list[tuple[int, int]], image_hw: tuple[int, int]) -> torch.Tensor:
        key = (tuple(feature_hws), tuple(image_hw))
        if key not in self._anchor_cache:
            self._anchor_cache[key] = self.anchor_fn(list(feature_hws), tuple(image_hw))
        return self._anchor_cache[key]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[tuple[int, int]]]:
        features = self.neck(self.backbone(x))
        cls, box = self.head(features)
        hws = [tuple(int(s) for s in f.shape[-2:]) for f in features]
        anchors = self.anchors(hws, tuple(int(s) for s in x.shape[-2:])).to(x.device)
        if anchors.shape[0] != cls.shape[1]:
            raise RuntimeError(f"{anchors.shape[0]} anchors for {cls.shape[1]} head outputs")
        return cls, box, anchors, hws


class BABOOutput(NamedTuple):
    cls_logits: torch.Tensor  # (N, A, C')
    box_deltas: torch.Tensor  # (N, A, 4)
    anchors: torch.Tensor  # (A, 4) xyxy input pixels
    mask: torch.Tensor | None  # (N, 1, H, W) binary (soft while training with soft-argmax)
    omg_logits: torch.Tensor | None  # (N, 2, H, W) OMG logits upsampled to the detector size
    alive: torch.Tensor | None = None  # (N, A) bool: anchors on a foreground cell of their level (None: no mask)


class BABODetector(nn.Module):
    """OMG (objectness mask generator) + detector whose every conv input is masked.

    Mask sources: the OMG (default when present); an external mask passed to forward (GT
    instance/box masks, saliency or random masks of the paper's Table 2), which takes
    precedence; or none, which is the vanilla detector. Input: RGB images (N, 3, H, W) in
    0..255; normalisation is part of the model so a checkpoint defines its preprocessing.
    """

    def __init__(self, detector: SingleShotDetector, omg: nn.Module | None = None, *,
                 omg_size: tuple[int, int] | None = None, argmax: str = "sg", beta: float = 5.0,
                 mean: tuple[float, float, float], std: tuple[float, float, float],
                 postprocess: PostprocessConfig = PostprocessConfig()):
        super().__init__()
        self.detector = detector
        self.omg = omg
        self.omg_size = tuple(omg_size) if omg_size else None
        self.argmax = argmax
        self.beta = beta
        self.postprocess = postprocess
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        self.blackout = ConvInputBlackout(detector)

    def objectness_mask(self, normalized: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """OMG at its own input size, its logits upsampled bilinearly to the detector size,
        then argmax (paper 4.5)."""
        size = tuple(normalized.shape[-2:])
        omg_in = normalized
        if self.omg_size and self.omg_size != size:
            omg_in = F.interpolate(normalized, size=self.omg_size, mode="bilinear", align_corners=False)
        logits = self.omg(omg_in, output_size=size)
        return binarize(logits, self.argmax, self.beta, self.training), logits

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        return (images - self.mean) / self.std

    def forward(self, images: torch.Tensor, mask: torch.Tensor | None = None) -> BABOOutput:
        x = self.normalize(images)
        omg_logits = None
        if mask is None and self.omg is not None:
            mask, omg_logits = self.objectness_mask(x)
        self.blackout.set_mask(mask)
        try:
            cls, box, anchors, hws = self.detector(x)
            pyramid = self.blackout.pyramid
            alive = None if pyramid is None else pyramid.anchor_alive(hws, self.detector.anchors_per_location)
        finally:
            self.blackout.set_mask(None)
        return BABOOutput(cls, box, anchors, mask, omg_logits, alive)

    def detect(self, images: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Detections (K, 7) = (image, label, score, x1, y1, x2, y2) and the mask used."""
        out = self(images, mask)
        return self.decode(out, tuple(images.shape[-2:])), out.mask

    def decode(self, out: BABOOutput, image_hw: tuple[int, int]) -> torch.Tensor:
        """Raw outputs -> detections (K, 7). Blacked-out anchors score 0 (mask-aware
        post-processing): they are background by construction, and would otherwise all carry
        the same bias-only scores."""
        return detect(out.cls_logits, out.box_deltas, out.anchors, image_hw, self.detector.coder,
                      self.detector.score_activation, self.postprocess, out.alive)
