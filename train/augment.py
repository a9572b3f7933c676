"""SSD data augmentation (Liu et al. 2016; MMDetection's SSD pipeline), numpy + opencv.

Photometric distortion, expand (zoom out), min-IoU random crop and horizontal flip, applied
to the image, its boxes and its foreground mask alike, then a plain resize to the input size.
Boxes are xyxy pixels; the mask is (H, W) uint8 0/1 (union of instance masks).
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

MIN_IOUS = (0.1, 0.3, 0.5, 0.7, 0.9)


@dataclass
class Example:
    image: np.ndarray  # (H, W, 3) uint8 RGB
    boxes: np.ndarray  # (N, 4) float32 xyxy
    labels: np.ndarray  # (N,) int64
    mask: np.ndarray  # (H, W) uint8, 1 = foreground


def photometric_distortion(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random brightness, contrast, saturation and hue, each with probability 0.5."""
    img = image.astype(np.float32)
    if rng.random() < 0.5:
        img += rng.uniform(-32, 32)
    contrast_first = rng.random() < 0.5
    if contrast_first and rng.random() < 0.5:
        img *= rng.uniform(0.5, 1.5)
    hsv = cv2.cvtColor(np.clip(img, 0, 255).astype(np.uint8), cv2.COLOR_RGB2HSV).astype(np.float32)
    if rng.random() < 0.5:
        hsv[..., 1] *= rng.uniform(0.5, 1.5)
    if rng.random() < 0.5:
        hsv[..., 0] = (hsv[..., 0] + rng.uniform(-9, 9)) % 180  # OpenCV hue is 0..180: +-18 deg
    img = cv2.cvtColor(np.clip(hsv, 0, [180, 255, 255]).astype(np.uint8), cv2.COLOR_HSV2RGB).astype(np.float32)
    if not contrast_first and rng.random() < 0.5:
        img *= rng.uniform(0.5, 1.5)
    return np.clip(img, 0, 255).astype(np.uint8)


def expand(ex: Example, rng: np.random.Generator, mean: tuple[float, float, float],
           max_ratio: float = 4.0) -> Example:
    """Zoom out: place the image on a mean-coloured canvas up to `max_ratio` times larger."""
    h, w = ex.image.shape[:2]
    ratio = rng.uniform(1, max_ratio)
    eh, ew = int(h * ratio), int(w * ratio)
    top, left = int(rng.uniform(0, eh - h)), int(rng.uniform(0, ew - w))
    canvas = np.empty((eh, ew, 3), np.uint8)
    canvas[:] = np.array(mean, dtype=np.uint8)
    canvas[top:top + h, left:left + w] = ex.image
    mask = np.zeros((eh, ew), np.uint8)
    mask[top:top + h, left:left + w] = ex.mask
    return Example(canvas, ex.boxes + np.array([left, top, left, top], np.float32), ex.labels, mask)


def _iou(boxes: np.ndarray, crop: np.ndarray) -> np.ndarray:
    lt = np.maximum(boxes[:, :2], crop[:2])
    rb = np.minimum(boxes[:, 2:], crop[2:])
    inter = np.clip(rb - lt, 0, None).prod(axis=1)
    area = (boxes[:, 2:] - boxes[:, :2]).prod(axis=1)
    return inter / (area + (crop[2:] - crop[:2]).prod() - inter)


def min_iou_random_crop(ex: Example, rng: np.random.Generator, min_crop_size: float = 0.3,
                        attempts: int = 50) -> Example:
    """SSD's crop: pick a min IoU (or keep the image), then try crops of 0.3-1 side and aspect
    0.5-2 whose IoU with every box is at least that; keep boxes whose centre is inside."""
    h, w = ex.image.shape[:2]
    mode = rng.integers(0, len(MIN_IOUS) + 1)
    if mode == len(MIN_IOUS) or len(ex.boxes) == 0:
        return ex
    min_iou = MIN_IOUS[mode]
    for _ in range(attempts):
        cw, ch = rng.uniform(min_crop_size * w, w), rng.uniform(min_crop_size * h, h)
        if not 0.5 <= ch / cw <= 2:
            continue
        left, top = rng.uniform(0, w - cw), rng.uniform(0, h - ch)
        crop = np.array([left, top, left + cw, top + ch], np.float32).astype(int).astype(np.float32)
        if crop[2] - crop[0] < 2 or crop[3] - crop[1] < 2:
            continue
        if _iou(ex.boxes, crop).min() < min_iou:
            continue
        centres = (ex.boxes[:, :2] + ex.boxes[:, 2:]) / 2
        inside = np.all((centres > crop[:2]) & (centres < crop[2:]), axis=1)
        if not inside.any():
            continue
        x1, y1, x2, y2 = crop.astype(int)
        boxes = ex.boxes[inside].copy()
        boxes[:, :2] = np.maximum(boxes[:, :2], crop[:2]) - crop[:2]
        boxes[:, 2:] = np.minimum(boxes[:, 2:], crop[2:]) - crop[:2]
        return Example(ex.image[y1:y2, x1:x2].copy(), boxes, ex.labels[inside], ex.mask[y1:y2, x1:x2].copy())
    return ex


def hflip(ex: Example) -> Example:
    w = ex.image.shape[1]
    boxes = ex.boxes.copy()
    boxes[:, [0, 2]] = w - ex.boxes[:, [2, 0]]
    return Example(ex.image[:, ::-1].copy(), boxes, ex.labels, ex.mask[:, ::-1].copy())


def resize(ex: Example, input_hw: tuple[int, int]) -> Example:
    """Plain resize to the network input (no letterbox), boxes scaled, mask nearest."""
    h, w = ex.image.shape[:2]
    ih, iw = input_hw
    image = cv2.resize(ex.image, (iw, ih), interpolation=cv2.INTER_LINEAR)
    mask = cv2.resize(ex.mask, (iw, ih), interpolation=cv2.INTER_NEAREST)
    boxes = ex.boxes * np.array([iw / w, ih / h, iw / w, ih / h], np.float32)
    return Example(image, boxes.astype(np.float32), ex.labels, mask)


def ssd_augment(ex: Example, rng: np.random.Generator, input_hw: tuple[int, int],
                mean: tuple[float, float, float]) -> Example:
    """The full SSD training pipeline: distort, expand (p=0.5), crop, flip (p=0.5), resize."""
    ex = Example(photometric_distortion(ex.image, rng), ex.boxes, ex.labels, ex.mask)
    if rng.random() < 0.5:
        ex = expand(ex, rng, mean)
    ex = min_iou_random_crop(ex, rng)
    if rng.random() < 0.5:
        ex = hflip(ex)
    return resize(ex, input_hw)
