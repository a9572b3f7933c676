"""What the camera app draws on a frame: the tinted blacked-out background, the ROI crop, boxes
with label and score, and the HUD lines. Torch-free (cv2, numpy)."""
from __future__ import annotations

import cv2
import numpy as np

from babo_edge.runtime.detector import Result

# The IR's confidence_threshold (0.05) keeps the low scores COCO AP needs; a display wants the sure ones.
DISPLAY_THRESHOLD = 0.5
TINT_BGR = (110, 40, 0)  # dark blue over the blacked-out background
TINT_STRENGTH = 0.55
PALETTE_BGR = ((56, 56, 255), (31, 112, 255), (29, 178, 255), (49, 210, 207), (10, 249, 72),
               (187, 212, 0), (255, 194, 0), (255, 56, 132), (200, 149, 255), (133, 0, 82))


def to_bgr(frame: np.ndarray) -> np.ndarray:
    """A new BGR copy of a gray (H, W) / (H, W, 1), BGR or BGRA frame, to draw on."""
    if frame.ndim == 2 or frame.shape[2] == 1:
        return cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR)
    if frame.shape[2] == 4:
        return cv2.cvtColor(frame, cv2.COLOR_BGRA2BGR)
    return frame.copy()


def tint_background(image: np.ndarray, mask: np.ndarray) -> None:
    """Blends the pixels the mask blacks out (mask == 0) with TINT_BGR, in place."""
    tinted = cv2.addWeighted(image, 1 - TINT_STRENGTH, np.full_like(image, TINT_BGR), TINT_STRENGTH, 0)
    np.copyto(image, tinted, where=(mask == 0)[..., None])


def text_scale(image: np.ndarray) -> tuple[float, int]:
    """Font scale and thickness readable on small and large frames alike."""
    scale = max(0.35, min(image.shape[:2]) / 800)
    return scale, max(1, round(2 * scale))


def put_label(image: np.ndarray, text: str, origin: tuple[int, int], color: tuple[int, int, int]) -> int:
    """`text` on a filled box whose top-left corner is `origin`; returns the box height."""
    scale, thickness = text_scale(image)
    (width, height), baseline = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
    x, y = origin
    box_height = height + baseline + 4
    cv2.rectangle(image, (x, y), (x + width + 4, y + box_height), color, cv2.FILLED)
    ink = (0, 0, 0) if sum(color) > 380 else (255, 255, 255)
    cv2.putText(image, text, (x + 2, y + height + 2), cv2.FONT_HERSHEY_SIMPLEX, scale, ink, thickness, cv2.LINE_AA)
    return box_height


def draw_detections(image: np.ndarray, result: Result) -> None:
    scale, thickness = text_scale(image)
    label_height = cv2.getTextSize("Ag", cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)[0][1] + 8
    for box, label, name, score in zip(result.boxes, result.labels, result.label_names, result.scores):
        color = PALETTE_BGR[int(label) % len(PALETTE_BGR)]
        x1, y1, x2, y2 = (int(round(v)) for v in box)
        cv2.rectangle(image, (x1, y1), (x2, y2), color, thickness)
        put_label(image, f"{name} {score:.2f}", (x1, max(0, y1 - label_height)), color)


def draw(frame: np.ndarray, result: Result, hud: list[str]) -> np.ndarray:
    """The annotated BGR frame: tinted background, the ROI crop (a thin white frame), boxes
    with label and score, `hud` lines top left."""
    image = to_bgr(frame)
    mask = result.mask_at_frame_size()
    if mask is not None:
        tint_background(image, mask)
    if result.roi is not None:
        x1, y1, x2, y2 = (int(round(v)) for v in result.roi)
        cv2.rectangle(image, (x1, y1), (x2 - 1, y2 - 1), (255, 255, 255), 1)
    draw_detections(image, result)
    y = 0
    for line in hud:
        y += put_label(image, line, (0, y), (32, 32, 32))
    return image
