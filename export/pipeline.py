"""The whole export of one model: ONNX, OpenVINO IR FP32 and FP16, NNCF INT8, each checked.

Files in the output folder: model.onnx, model_fp32.xml/.bin, model_fp16.xml/.bin,
model_int8.xml/.bin and export_report.json (parity against PyTorch, INT8 against FP32, timing).
ONNX and FP32 IR must match PyTorch within FP32_TOLERANCE; FP16 and INT8 are reported, and
their masks must still be exactly 0/1 (INT8 is also refused by `quantize_int8` when the graph
check fails).
"""
from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import openvino as ov

from export.onnx_export import export_onnx
from export.openvino_ir import (MODEL_INFO, compile_fp32, convert, model_info, save_ir,
                                set_model_info)
from export.parity import (BINARY_MASK_ONLY, FP32_TOLERANCE, Parity, compare, onnxruntime_runner,
                           openvino_runner, torch_runner)
from export.quantize import quantize_int8
from models.checkpoint import Checkpoint
from models.detector import BABODetector

REPORT_FILE = "export_report.json"
TOLERANCES = {"onnx": FP32_TOLERANCE, "fp32": FP32_TOLERANCE, "fp16": BINARY_MASK_ONLY, "int8": BINARY_MASK_ONLY}


@dataclass
class ExportOptions:
    dynamic_batch: bool = False
    int8: bool = True
    preset: str = "performance"
    subset_size: int = 300


@dataclass
class ExportReport:
    files: dict[str, str] = field(default_factory=dict)
    parity: dict[str, Parity] = field(default_factory=dict)  # "onnx", "fp32", "fp16" vs PyTorch; "int8" vs fp32
    failures: dict[str, list[str]] = field(default_factory=dict)
    int8: dict = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {"files": self.files, "parity": {k: p.as_dict() for k, p in self.parity.items()},
                "failures": self.failures, "int8": self.int8, "seconds": self.seconds}


def export_all(model: BABODetector, checkpoint: Checkpoint, out_dir: str | os.PathLike,
               calibration: Sequence[np.ndarray], parity_images: Sequence[np.ndarray],
               options: ExportOptions = ExportOptions()) -> ExportReport:
    """Writes every artifact into `out_dir` and returns (and writes) the report."""
    out_dir = Path(out_dir)
    report = ExportReport()
    reference = torch_runner(model)

    def stage(name: str, path: Path, candidate, against=reference) -> None:
        report.files[name] = str(path)
        report.parity[name] = compare(against, candidate, parity_images)

    started = time.perf_counter()
    onnx_path = export_onnx(model, checkpoint.config.input_size, out_dir / "model.onnx", options.dynamic_batch)
    ov_model = convert(onnx_path)
    set_model_info(ov_model, model_info(model, checkpoint.config, checkpoint.class_names, ov_model))
    report.seconds["export"] = time.perf_counter() - started
    stage("onnx", onnx_path, onnxruntime_runner(onnx_path))
    ir_runners = {}
    for precision in ("fp32", "fp16"):
        path = save_ir(ov_model, out_dir / f"model_{precision}.xml", precision)
        ir_runners[precision] = openvino_runner(compile_fp32(path))
        stage(precision, path, ir_runners[precision])

    if options.int8:
        started = time.perf_counter()
        int8 = quantize_int8(ov_model, calibration, options.preset, options.subset_size)
        report.seconds["int8"] = time.perf_counter() - started
        report.int8 = {"preset": options.preset, "calibration_images": min(options.subset_size, len(calibration)),
                       "ignored_nodes": len(int8.ignored_scope.names),
                       "fake_quantize_nodes": sum(op.get_type_name() == "FakeQuantize"
                                                  for op in int8.model.get_ordered_ops())}
        int8.model.set_rt_info(json.dumps(report.int8), [MODEL_INFO, "quantization"])
        path = save_ir(int8.model, out_dir / "model_int8.xml", "int8")
        stage("int8", path, openvino_runner(ov.Core().compile_model(str(path), "CPU")), against=ir_runners["fp32"])

    for name, parity in report.parity.items():
        problems = parity.violations(TOLERANCES[name])
        if problems:
            report.failures[name] = problems
    (out_dir / REPORT_FILE).write_text(json.dumps(report.as_dict(), indent=2) + "\n", encoding="utf-8")
    return report
