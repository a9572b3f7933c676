"""ONNX -> OpenVINO model, its metadata, and IR files (FP32 / FP16).

Metadata follows the OpenVINO Model API convention, `rt_info["model_info"][key]` as strings
(lists space-separated, booleans "True"/"False"), so Model API, DL Streamer and our runtime
read the same section. Preprocessing is embedded (`embedded_processing`): the graph takes RGB
float 0..255 at `input_height` x `input_width`, resized without letterbox, and `mean_values` /
`scale_values` are the normalisation the graph already applies, not steps for the caller.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import openvino as ov

from models.builders import ModelConfig
from models.detector import BABODetector
from models.profiling import network_convs

MODEL_INFO = "model_info"
MODEL_TYPE = "babo_ssd"
IR_FORMAT = "babo-edge-ir"
IR_FORMAT_VERSION = 1
FP32_HINT = {"INFERENCE_PRECISION_HINT": "f32"}  # the CPU plugin would otherwise run bf16/fp16 where it can


def convert(onnx_path: str | os.PathLike) -> ov.Model:
    return ov.convert_model(str(onnx_path))


def model_info(model: BABODetector, config: ModelConfig, class_names: list[str]) -> dict[str, str]:
    """The `model_info` entries of an exported BABO model (precision is added when saving)."""
    info = {
        "model_type": MODEL_TYPE,
        "format": IR_FORMAT,
        "format_version": str(IR_FORMAT_VERSION),
        # Model API splits labels on spaces.
        "labels": " ".join(name.replace(" ", "_") for name in class_names),
        "input_height": str(config.input_size[0]),
        "input_width": str(config.input_size[1]),
        "mean_values": _spaced(config.mean),
        "scale_values": _spaced(config.std),
        "reverse_input_channels": "False",
        "color_space": "RGB",
        "resize_type": "standard",
        "embedded_processing": "True",
        "confidence_threshold": str(config.postprocess.score_threshold),
        "iou_threshold": str(config.postprocess.iou_threshold),
        "pre_nms_top_k": str(config.postprocess.pre_nms_top_k),
        "max_detections": str(config.postprocess.max_detections),
        "model_config": json.dumps(config.to_dict()),
        "tool_versions": json.dumps(tool_versions()),
    }
    if model.omg is not None:
        omg_hw = config.omg_size or config.input_size
        info["mask_input_height"], info["mask_input_width"] = str(omg_hw[0]), str(omg_hw[1])
        info["masked_convs"] = json.dumps([{"name": name, "block": block}
                                           for network, name, block, _ in network_convs(model)
                                           if network == "od"])
    return info


def tool_versions() -> dict[str, str]:
    import nncf
    import onnx
    import torch
    return {"torch": torch.__version__, "onnx": onnx.__version__, "openvino": ov.get_version(),
            "nncf": nncf.__version__}


def set_model_info(model: ov.Model, info: dict[str, str]) -> None:
    for key, value in info.items():
        model.set_rt_info(value, [MODEL_INFO, key])


def read_model_info(model: ov.Model) -> dict[str, str]:
    if not model.has_rt_info([MODEL_INFO]):
        return {}
    return {key: model.get_rt_info([MODEL_INFO, key]).astype(str)
            for key in model.get_rt_info([MODEL_INFO]).astype(dict)}


def save_ir(model: ov.Model, xml_path: str | os.PathLike, precision: str) -> Path:
    """Saves `model` ("fp32" or "fp16" weights; "int8" for a quantized model, kept as it is)
    with its precision recorded in model_info."""
    if precision not in ("fp32", "fp16", "int8"):
        raise ValueError(f"unknown IR precision {precision!r}")
    xml_path = Path(xml_path)
    xml_path.parent.mkdir(parents=True, exist_ok=True)
    model.set_rt_info(precision, [MODEL_INFO, "precision"])
    ov.save_model(model, str(xml_path), compress_to_fp16=precision == "fp16")
    return xml_path


def compile_fp32(model: ov.Model | str | os.PathLike, device: str = "CPU") -> ov.CompiledModel:
    """Compiled with f32 inference precision: parity against PyTorch needs no bf16 shortcuts."""
    return ov.Core().compile_model(model if isinstance(model, ov.Model) else str(model), device, FP32_HINT)


def _spaced(values) -> str:
    return " ".join(f"{v:g}" for v in values)
