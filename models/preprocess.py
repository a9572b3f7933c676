"""Image -> model input, torch-free: the one definition shared by PyTorch tools and the runtime.

Models take RGB, float32, 0..255, NCHW at their input size, resized without letterboxing
(as SSD is trained); mean/std normalisation is inside the model.
"""
from __future__ import annotations

import cv2
import numpy as np


def to_model_input(image_rgb: np.ndarray, input_hw: tuple[int, int]) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> (3, h, w) float32 at the model input size (bilinear resize)."""
    if image_rgb.ndim != 3 or image_rgb.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) RGB image, got shape {image_rgb.shape}")
    h, w = input_hw
    resized = cv2.resize(image_rgb, (w, h), interpolation=cv2.INTER_LINEAR)
    planar = np.empty((3, h, w), np.float32)
    for channel, plane in zip(planar, cv2.split(resized)):  # contiguous planes: 2x faster than a strided transpose
        channel[...] = plane
    return planar
