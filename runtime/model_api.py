"""A wrapper that lets OpenVINO Model API (`openvino-model-api`, the `[modelapi]` extra) load our
IRs: `Model.create_model("model.xml")` finds a model class by `rt_info["model_info"]["model_type"]`,
so importing this module registers `BaboSSD` for `babo_ssd`.

Model API embeds its own pre-processing into the graph (u8 BGR frame in, resize, channel swap) and
rounds boxes to integer frame pixels; the graph itself already decodes and NMS-es, so `postprocess`
only scales and filters. `runtime.Detector` remains the reference runtime: it also returns the mask
and supports the sparse execution paths.
"""
from __future__ import annotations

import numpy as np
from model_api.models import DetectionModel
from model_api.models.result import DetectionResult

from babo_edge.ir_metadata import DETECTIONS, MODEL_TYPE


class BaboSSD(DetectionModel):
    """Model API's view of a babo-edge IR exported with decoded outputs (the default)."""

    __model__ = MODEL_TYPE

    def __init__(self, inference_adapter, configuration: dict | None = None, preload: bool = False) -> None:
        super().__init__(inference_adapter, configuration or {}, preload)
        if DETECTIONS not in self.outputs:
            self.raise_error(f"needs the '{DETECTIONS}' output: export without --raw-outputs")

    @classmethod
    def parameters(cls):
        parameters = super().parameters()
        # Frames come from OpenCV (BGR); the graph takes RGB and normalises itself.
        parameters["reverse_input_channels"].update_default_value(True)
        return parameters

    def postprocess(self, outputs, meta) -> DetectionResult:
        """(K, 7) rows (image, label, score, x1, y1, x2, y2) in input pixels -> frame pixels."""
        rows = outputs[DETECTIONS]
        rows = rows[rows[:, 0] == 0]
        boxes = rows[:, 3:7] / np.array([self.w, self.h] * 2, dtype=np.float32)
        result = DetectionResult(bboxes=boxes, labels=rows[:, 1], scores=rows[:, 2])
        self._resize_detections(result, meta)
        self._filter_detections(result)
        self._add_label_names(result)
        return result
