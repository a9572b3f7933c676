"""NNCF post-training INT8 of the FP32 OpenVINO model, with the mask kept exact.

By default NNCF 3.4 quantizes both inputs of every `Multiply`: it puts a FakeQuantize (range
[0, 1]) on the argmax's `Convert` output where it feeds the first masking Multiply, and one
before the first `MaxPool` of the mask pyramid, shared by all the others. The mask must reach
every conv input exactly as the argmax made it, so the ignored scope (node names, computed from
the graph by `export.mask_graph`) holds the mask path from the OMG's last conv through the
argmax up to and including the masking Multiplies, and the post-processing (scores, top-k,
box decoding, NMS). The quantized model is checked, its masking rewritten into 8-bit integers
times the mask (`export.lean_graph.integer_mask_multiplies`: the same integers reach every conv,
which the CPU plugin then runs with int8 outputs), and checked again before it is returned. The
data side (calibration images) and the ignored scope are separate functions so
`nncf.quantize_with_accuracy_control` can reuse both.
"""
from __future__ import annotations

import os
from pathlib import Path
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import nncf
import numpy as np
import openvino as ov

from babo_edge.errors import BaboError
from babo_edge.calibration.coco import CocoDetection
from babo_edge.calibration.folder import ImageFolder
from babo_edge.calibration.synthetic import ensure_default_dataset, split_files
from babo_edge.export.lean_graph import integer_mask_multiplies
from babo_edge.ir_metadata import MASK
from babo_edge.export.mask_graph import (fake_quantizes_on_mask, find_mask_path, has_output,
                               postprocessing_nodes, quantizers_before_signs, quantizers_not_keeping_zero,
                               sign_input_nodes)
from babo_edge.models.preprocess import to_model_input



class MaskQuantizedError(BaboError, RuntimeError):
    """The INT8 model would no longer black out exactly."""


class SignQuantizedError(BaboError, RuntimeError):
    """The INT8 model's binary convs would no longer read the FP32 model's signs."""


class CalibrationImages(Sequence[np.ndarray]):
    """Up to `count` model inputs (1, 3, H, W) float32, read when indexed (300 inputs at 512 px
    would hold 0.9 GB) from `source`: a dataset folder in our COCO layout (its calib split), a
    folder of images (subfolders included), or None for the built-in dataset's calib split
    (generated on first use). `available` is how many images the source has."""

    def __init__(self, input_hw: tuple[int, int], count: int, source: str | os.PathLike | None = None):
        self.input_hw = tuple(input_hw)
        if source is None or Path(split_files(source, "calib")[0]).is_file():
            coco = CocoDetection(*split_files(source or ensure_default_dataset(), "calib"))
            self._read_rgb = lambda i: coco[i].image
            self.available = len(coco)
        else:
            folder = ImageFolder(source, recursive=True)
            self._read_rgb = lambda i: folder[i][1]
            self.available = len(folder)
        self._count = min(count, self.available)

    def __len__(self) -> int:
        return self._count

    def __getitem__(self, index: int) -> np.ndarray:
        if not 0 <= index < self._count:
            raise IndexError(index)
        return to_model_input(self._read_rgb(index), self.input_hw)[None]


def ignored_scope(model: ov.Model) -> nncf.IgnoredScope:
    """The mask path (logits upsampling -> argmax -> Convert -> MaxPool pyramid -> masking
    Multiplies), the inputs of binary convs' signs and the post-processing, by node name.

    The logits side is needed too: NNCF leaves the ops between the last conv and a TopK alone
    only while it finds them from the outputs back to an un-ignored TopK; once the argmax is in
    the scope, it quantizes the OMG logits in front of it. Names rather than types (Multiply
    and TopK also occur in the post-processing, MaxPool could occur in a backbone) or a Subgraph
    (NNCF expands it into all simple paths between its ends, which is this same set); NNCF
    validates every name (validate=True)."""
    nodes = list(postprocessing_nodes(model)) + sign_input_nodes(model)
    if has_output(model, MASK):
        nodes += find_mask_path(model).nodes()
    return nncf.IgnoredScope(names=sorted({node.get_friendly_name() for node in nodes}), validate=True)


@dataclass
class Int8Model:
    model: ov.Model
    ignored_scope: nncf.IgnoredScope


def quantize_int8(model: ov.Model, images: Sequence[np.ndarray], preset: str = "performance",
                  subset_size: int = 300, scope: nncf.IgnoredScope | None = None) -> Int8Model:
    """INT8 `model` calibrated on `images` ((1, 3, H, W) model inputs). `scope` defaults to
    `ignored_scope(model)`; another scope is for experiments and is not checked."""
    protect = scope is None
    scope = ignored_scope(model) if protect else scope
    quantized = nncf.quantize(model, nncf.Dataset(images), preset=nncf.QuantizationPreset(preset),
                              subset_size=min(subset_size, len(images)), ignored_scope=scope)
    if protect:
        lean_int8(quantized)
    return Int8Model(quantized, scope)


def quantize_int8_with_accuracy_control(model: ov.Model, images: Sequence[np.ndarray], validation_items: Sequence,
                                        validation_fn: Callable[[ov.CompiledModel, Iterable], float],
                                        max_drop: float, preset: str = "performance",
                                        subset_size: int = 300) -> Int8Model:
    """`nncf.quantize_with_accuracy_control`: layers whose quantization costs the most metric are
    reverted to float until `validation_fn(compiled, items)` (higher is better) is at most
    `max_drop` (absolute, in the metric's unit) below the FP32 model's. Same ignored scope and
    check as `quantize_int8`."""
    scope = ignored_scope(model)
    quantized = nncf.quantize_with_accuracy_control(
        model, nncf.Dataset(images), nncf.Dataset(list(validation_items)), validation_fn,
        max_drop=max_drop, drop_type=nncf.DropType.ABSOLUTE, preset=nncf.QuantizationPreset(preset),
        subset_size=min(subset_size, len(images)), ignored_scope=scope)
    lean_int8(quantized)
    return Int8Model(quantized, scope)


def lean_int8(model: ov.Model) -> None:
    """Checks NNCF's model (the rewrite relies on an exactly binary mask; binary convs must read
    unquantized signs), rewrites its masking into the integer form in place and checks the result."""
    check_mask_exact(model)
    check_signs_exact(model)
    if has_output(model, MASK):
        integer_mask_multiplies(model)
        check_mask_exact(model)


def check_signs_exact(model: ov.Model) -> None:
    """Raises SignQuantizedError if an 8-bit FakeQuantize feeds a binary conv's sign."""
    before = quantizers_before_signs(model)
    if before:
        raise SignQuantizedError(f"FakeQuantize in front of a binary sign: {', '.join(before)}")


def check_mask_exact(model: ov.Model) -> None:
    """Raises MaskQuantizedError if a FakeQuantize sits on the mask path or a conv input
    quantizer would not map the blacked-out zeros to zero."""
    if not has_output(model, MASK):
        return
    on_mask = fake_quantizes_on_mask(model)
    if on_mask:
        raise MaskQuantizedError(f"FakeQuantize on the mask path: {', '.join(on_mask)}")
    moved_zero = quantizers_not_keeping_zero(model)
    if moved_zero:
        raise MaskQuantizedError(f"conv input quantizers that do not keep 0: {', '.join(moved_zero)}")
