"""BABODetector -> ONNX with the TorchScript exporter (opset 17).

The NMS of `models.postprocess` is an autograd Function with an ONNX symbolic, which only the
TorchScript exporter (`dynamo=False`) honours. The graph has one input, `image` (N, 3, H, W)
RGB float 0..255 at the model's input size (normalisation is inside), and outputs
`detections` (K, 7) = (image, label, score, x1, y1, x2, y2) and `mask` (N, 1, H, W) in {0, 1};
raw mode outputs `cls_logits`, `box_deltas` and `mask` instead, and the anchors go to a
`.npy` file beside the ONNX file. A model without OMG has no `mask` output.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from babo_edge.ir_metadata import BOX_DELTAS, CLS_LOGITS, DETECTIONS, INPUT, MASK
from babo_edge.models.detector import BABODetector

OPSET = 17
INPUT_NAME = INPUT


class ExportGraph(nn.Module):
    """What the exported graph computes: detect() (post-processing included) or raw head outputs.

    Always in eval mode, model included: the exporter restores the wrapper's mode afterwards,
    recursively, so a wrapper left in (default) training mode would put the model in it too."""

    def __init__(self, model: BABODetector, raw: bool = False):
        super().__init__()
        self.model = model
        self.raw = raw
        self.eval()

    @property
    def has_mask(self) -> bool:
        return self.model.omg is not None

    @property
    def output_names(self) -> list[str]:
        names = [CLS_LOGITS, BOX_DELTAS] if self.raw else [DETECTIONS]
        return names + ([MASK] if self.has_mask else [])

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if self.raw:
            out = self.model(image)
            outputs = (out.cls_logits, out.box_deltas, out.mask)
        else:
            outputs = self.model.detect(image)
        return outputs if self.has_mask else outputs[:-1]


def anchors_path(onnx_path: str | os.PathLike) -> Path:
    """Where raw mode stores the anchors (A, 4), xyxy input pixels, float32."""
    onnx_path = Path(onnx_path)
    return onnx_path.with_name(f"{onnx_path.stem}_anchors.npy")


def export_onnx(model: BABODetector, input_hw: tuple[int, int], path: str | os.PathLike,
                dynamic_batch: bool = False, raw: bool = False) -> Path:
    """Exports `model` (put in eval mode) for `input_hw` images, checks the file with the ONNX
    checker and returns its path. Spatial sizes are fixed: anchors and the mask pyramid depend
    on them."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    graph = ExportGraph(model, raw=raw)
    # Batch 2 when the batch is dynamic, so no dimension of size 1 gets specialised by the tracer.
    example = torch.rand(2 if dynamic_batch else 1, 3, *input_hw, generator=torch.Generator().manual_seed(0)) * 255
    dynamic_axes = None
    if dynamic_batch:
        dynamic_axes = {name: {0: "batch"} for name in [INPUT_NAME, *graph.output_names] if name != DETECTIONS}
    with torch.no_grad(), warnings.catch_warnings():
        # Shape-dependent Python (sizes, pyramid levels, top-k) is meant to be constant in the graph.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        # Chosen on purpose: only this exporter uses the NMS's ONNX symbolic.
        warnings.filterwarnings("ignore", "You are using the legacy TorchScript-based ONNX export",
                                DeprecationWarning)
        torch.onnx.export(graph, (example,), str(path), dynamo=False, opset_version=OPSET,
                          input_names=[INPUT_NAME], output_names=graph.output_names,
                          dynamic_axes=dynamic_axes)
        if raw:
            np.save(anchors_path(path), model(example[:1]).anchors.numpy().astype(np.float32))
    onnx.checker.check_model(str(path))
    return path
