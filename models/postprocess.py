"""Decode + class-aware NMS + top-k, in torch and traceable for ONNX export.

The graph is fixed-shape up to the NMS: per image the `pre_nms_top_k` best (anchor, class)
pairs are the candidates (all of them when no more pass the score threshold), boxes decoded
and clipped, shifted by class so one NMS call is class-aware, and NMS keeps at most
`max_detections` boxes per image. NMS is an autograd Function whose eager
forward is a greedy NMS and whose ONNX symbolic is the standard `NonMaxSuppression` op (which
OpenVINO and onnxruntime run natively), so eager and exported models share one definition.

Output: detections (K, 7) = (image index, label, score, x1, y1, x2, y2), input pixels, sorted by
image then score.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch

from babo_edge.models.anchors import BoxCoder


@dataclass(frozen=True)
class PostprocessConfig:
    score_threshold: float = 0.05
    iou_threshold: float = 0.45
    pre_nms_top_k: int = 1000
    max_detections: int = 100


def class_scores(cls_logits: torch.Tensor, activation: str) -> torch.Tensor:
    """(N, A, C') logits -> (N, A, C) foreground class probabilities.

    "softmax": SSD, C' = C + 1 with background as the last column (MMDetection's layout);
    "sigmoid": RetinaNet, C' = C.
    """
    if activation == "softmax":
        # Over the anchors' axis: OpenVINO's CPU Softmax on a short innermost axis (C' = 7)
        # does not vectorise, and two Transposes cost less than the difference.
        return torch.softmax(cls_logits.transpose(1, 2), dim=1).transpose(1, 2)[..., :-1]
    if activation == "sigmoid":
        return torch.sigmoid(cls_logits)
    raise ValueError(f"unknown score activation {activation!r}")


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU matrix of xyxy boxes (M, 4) x (K, 4)."""
    area_a = (a[:, 2] - a[:, 0]).clamp(min=0) * (a[:, 3] - a[:, 1]).clamp(min=0)
    area_b = (b[:, 2] - b[:, 0]).clamp(min=0) * (b[:, 3] - b[:, 1]).clamp(min=0)
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(dim=2)
    return inter / (area_a[:, None] + area_b[None, :] - inter).clamp(min=1e-12)


class _NonMaxSuppression(torch.autograd.Function):
    """ONNX NonMaxSuppression semantics: boxes (B, N, 4), scores (B, C, N) -> (K, 3) int64
    (batch, class, box), boxes kept when score > score_threshold, suppressed when IoU >
    iou_threshold with a kept box of higher score, at most `max_per_class` per (batch, class)."""

    @staticmethod
    def forward(ctx, boxes, scores, max_per_class: int, iou_threshold: float, score_threshold: float):
        # While exporting, this eager body only produces an example output: the graph gets the
        # symbolic below, so the tracer's data-dependence warnings do not apply.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            return _greedy_nms(boxes, scores, max_per_class, iou_threshold, score_threshold)

    @staticmethod
    def symbolic(g, boxes, scores, max_per_class, iou_threshold, score_threshold):
        const = lambda v, dtype: g.op("Constant", value_t=torch.tensor([v], dtype=dtype))  # noqa: E731
        return g.op("NonMaxSuppression", boxes, scores, const(max_per_class, torch.int64),
                    const(iou_threshold, torch.float32), const(score_threshold, torch.float32))


def _greedy_nms(boxes, scores, max_per_class: int, iou_threshold: float, score_threshold: float):
    """Eager NonMaxSuppression with the ONNX op's semantics (see _NonMaxSuppression)."""
    selected = []
    for b in range(scores.shape[0]):
        for c in range(scores.shape[1]):
            s = scores[b, c]
            candidates = torch.nonzero(s > score_threshold).flatten()
            order = candidates[torch.argsort(s[candidates], descending=True, stable=True)]
            iou = box_iou(boxes[b, order], boxes[b, order])
            keep: list[int] = []
            for i in range(order.numel()):
                if len(keep) == max_per_class:
                    break
                if not keep or bool((iou[i, keep] <= iou_threshold).all()):
                    keep.append(i)
            for i in keep:
                selected.append((b, c, int(order[i])))
    return torch.tensor(selected, dtype=torch.int64).reshape(-1, 3)


@torch.jit.script
def keep_top_k(scores: torch.Tensor, k: int, threshold: float) -> torch.Tensor:
    """(N, P) scores with all but each row's k best set to 0, or unchanged when no row has more
    than k above `threshold`: NMS ignores scores <= threshold, so the common case skips the
    top-k sort (scripted, so the branch is an ONNX If and the graph skips it too)."""
    if int((scores > threshold).sum(dim=1).max()) > k:
        values, indices = scores.topk(min(k, scores.shape[1]), dim=1)
        return torch.zeros_like(scores).scatter(1, indices, values)
    return scores


def detect(cls_logits: torch.Tensor, box_deltas: torch.Tensor, anchors: torch.Tensor,
           image_hw: tuple[int, int], coder: BoxCoder, activation: str,
           config: PostprocessConfig, alive: torch.Tensor | None = None) -> torch.Tensor:
    """Raw head outputs -> detections (K, 7), see the module docstring. `alive` (N, A) bool:
    anchors outside it score 0, so they are never kept (the score threshold is > 0)."""
    scores = class_scores(cls_logits, activation)
    if alive is not None:
        scores = scores * alive[..., None].to(scores.dtype)
    n, a, c = scores.shape
    pair_scores = keep_top_k(scores.reshape(n, a * c), config.pre_nms_top_k, config.score_threshold)
    h, w = image_hw
    boxes = torch.minimum(coder.decode(box_deltas, anchors).clamp(min=0), anchors.new_tensor([w, h, w, h]))
    # Class-aware NMS in one call over every (anchor, class) pair: boxes of different classes
    # are moved apart so they never overlap.
    shift = torch.arange(c, dtype=boxes.dtype) * (max(h, w) + 1)
    shifted = (boxes[:, :, None, :] + shift[None, None, :, None]).reshape(n, a * c, 4)
    keep = _NonMaxSuppression.apply(shifted, pair_scores[:, None, :], config.max_detections,
                                    config.iou_threshold, config.score_threshold)
    image_idx, pair_idx = keep[:, 0], keep[:, 2]
    anchor_idx = torch.div(pair_idx, c, rounding_mode="floor")
    return torch.cat([
        image_idx[:, None].to(boxes.dtype),
        (pair_idx - anchor_idx * c)[:, None].to(boxes.dtype),
        pair_scores[image_idx, pair_idx][:, None],
        boxes[image_idx, anchor_idx],
    ], dim=1)


def split_by_image(detections: torch.Tensor, batch_size: int) -> list[dict[str, torch.Tensor]]:
    """(K, 7) detections -> per image {"boxes", "scores", "labels"}."""
    out = []
    for i in range(batch_size):
        d = detections[detections[:, 0] == i]
        out.append({"boxes": d[:, 3:7], "scores": d[:, 2], "labels": d[:, 1].long()})
    return out
