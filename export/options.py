"""What an export is asked for, and its one error type: light (no torch, no openvino), so the
CLI parses and validates its arguments before the heavy stages are imported."""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from babo_edge.errors import BaboError
from babo_edge.artifacts import PRECISIONS

if TYPE_CHECKING:
    from babo_edge.models.builders import ModelConfig

PRESETS = ("performance", "mixed")  # nncf.QuantizationPreset values: symmetric / asymmetric activations
SIZE_STEP = 32  # the detector's output stride: sizes that are not multiples get misaligned maps
SIZE_RANGE = (64, 2048)


class ExportError(BaboError, RuntimeError):
    """A one-line reason the export cannot start or finish."""


@dataclass
class ExportOptions:
    precisions: tuple[str, ...] = PRECISIONS
    dynamic_batch: bool = False
    raw_outputs: bool = False  # head outputs + anchors instead of in-graph decoding and NMS
    preset: str = "performance"
    subset_size: int = 300
    max_ap_drop: float | None = None  # AP points; set: nncf.quantize_with_accuracy_control
    parity_images: int = 8
    val_images: int | None = None  # None: the whole split


def export_config(config: ModelConfig, input_size: int | None) -> ModelConfig:
    """The checkpoint's config, at a square `input_size` if given, the OMG scaled alike."""
    if input_size is None:
        return config
    low, high = SIZE_RANGE
    if input_size % SIZE_STEP or not low <= input_size <= high:
        raise ExportError(f"unsupported input size {input_size}: use a multiple of {SIZE_STEP} "
                          f"from {low} to {high}")
    omg_size = None
    if config.omg_size is not None:
        scale = input_size / config.input_size[0]
        omg_size = tuple(max(SIZE_STEP, round(side * scale / SIZE_STEP) * SIZE_STEP) for side in config.omg_size)
    return replace(config, input_size=(input_size, input_size), omg_size=omg_size)


