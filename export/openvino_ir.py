"""ONNX -> OpenVINO model, its metadata, and IR files (FP32 / FP16).

Metadata is `rt_info["model_info"][key]` as strings (the OpenVINO Model API convention), its
keys declared once in `babo_edge.ir_metadata`, which the runtime reads with. The graph takes
RGB float 0..255 at `input_height` x `input_width`, resized without letterbox, and normalises
inside the graph (`normalization_mean` / `normalization_std` are stated, not caller steps).
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import openvino as ov
import torch

from babo_edge import ir_metadata
from babo_edge.export.lean_graph import added_by_rewrite, lean_graph
from babo_edge.ir_metadata import BLACKED_OUT_BACKGROUND, IR_FORMAT, MODEL_TYPE, IRMetadata
from babo_edge.models.builders import ModelConfig
from babo_edge.models.detector import BABODetector
from babo_edge.models.profiling import profile
from babo_edge.artifacts import PRECISIONS
# BinaryConvolution: the binary convs of models/binary.py, already rewritten by convert_model
IR_CONVOLUTIONS = ("Convolution", "GroupConvolution", "BinaryConvolution")
FP32_HINT = {"INFERENCE_PRECISION_HINT": "f32"}  # the CPU plugin would otherwise run bf16/fp16 where it can


def convert(onnx_path: str | os.PathLike) -> ov.Model:
    """The ONNX model in OpenVINO, with the exact rewrites of `export.lean_graph.lean_graph`."""
    return lean_graph(ov.convert_model(str(onnx_path)))


def model_info(model: BABODetector, config: ModelConfig, class_names: list[str],
               ov_model: ov.Model) -> IRMetadata:
    """The model_info of `ov_model`, exported from `model` (`precision` is added when saving,
    `outputs` and `quantization` by the pipeline)."""
    omg_hw = (config.omg_size or config.input_size) if model.omg is not None else (None, None)
    return IRMetadata(
        model_type=MODEL_TYPE,
        format=IR_FORMAT,
        format_version=ir_metadata.FORMAT_VERSION,
        labels=tuple(name.replace(" ", "_") for name in class_names),
        input_height=int(config.input_size[0]),
        input_width=int(config.input_size[1]),
        normalization_mean=tuple(float(v) for v in config.mean),
        normalization_std=tuple(float(v) for v in config.std),
        color_space="RGB",
        resize_type="standard",
        confidence_threshold=float(config.postprocess.score_threshold),
        iou_threshold=float(config.postprocess.iou_threshold),
        pre_nms_top_k=int(config.postprocess.pre_nms_top_k),
        max_detections=int(config.postprocess.max_detections),
        model_config=json.loads(json.dumps(config.to_dict())),  # as read back: lists, not tuples
        tool_versions=tool_versions(),
        convs=conv_table(model, ov_model, config.input_size),
        mask_input_height=omg_hw[0],
        mask_input_width=omg_hw[1],
        # Mask-aware post-processing: anchors on blacked-out cells score 0 before top-k and NMS,
        # so no detection comes from a background cell (sparse execution may skip them).
        blacked_out_anchors=BLACKED_OUT_BACKGROUND if model.omg is not None else None,
    )


def conv_table(model: BABODetector, ov_model: ov.Model, input_hw: tuple[int, int]) -> list[dict]:
    """Every conv of the IR as a layer of the PyTorch MAC report, in the PyTorch execution
    order (a conv a lean rewrite added is not one of the model's): {"node": IR friendly name,
    "name", "network", "block"} (names and blocks as `models.profiling` gives them), so that
    the runtime's counters and report need nothing but the .xml and produce rows that diff
    line by line with the PyTorch report.

    The TorchScript exporter names each node by the module scope it ran in, so the IR node
    is found from the module path; a module called from another module's forward (the
    tapped expansion of an SSDLite stage) gets a shorter scope, matched as a sub-sequence of
    the path with the same conv shape. Every conv must be matched exactly once."""
    with torch.no_grad():
        layers = [count.layer for count in profile(model, torch.zeros(1, 3, *input_hw)).counts[0]]
    nodes = [op for op in ov_model.get_ordered_ops()
             if op.get_type_name() in IR_CONVOLUTIONS and not added_by_rewrite(op)]
    if len(nodes) != len(layers):
        raise ValueError(f"the IR has {len(nodes)} convolutions, the model ran {len(layers)}")
    scopes: dict[str, list[ov.Node]] = {}
    for node in sorted(nodes, key=lambda n: _call_index(n.get_friendly_name())):
        scopes.setdefault(_module_path(node.get_friendly_name()), []).append(node)
    prefixes = {"omg": "omg", "od": "detector"}
    table = []
    for layer in layers:
        module, _, repeat = layer.name.partition("#")
        path = f"{prefixes[layer.network]}.{module}"
        candidates = [scope for scope, found in scopes.items() if found and _same_conv(found[0], layer)
                      and (scope == path or _is_subsequence(scope.split("."), path.split(".")))]
        exact = [scope for scope in candidates if scope == path]
        if len(exact or candidates) != 1:
            raise ValueError(f"cannot find the IR convolution of {layer.network} layer {layer.name} "
                             f"({len(candidates)} candidates)")
        node = scopes[(exact or candidates)[0]].pop(0)
        table.append({"node": node.get_friendly_name(), "name": layer.name, "network": layer.network,
                      "block": layer.block})
    return table


def _module_path(node_name: str) -> str:
    """'/model/omg/stage/stage.0/stage.0.1/Conv/WithoutBiases' -> 'omg.stage.0.1'."""
    parts = node_name.strip("/").split("/")
    if parts[-1] == "WithoutBiases":
        parts = parts[:-1]
    path: list[str] = []
    for part in parts[1:-1]:  # drop the wrapper ('model') and the op name ('Conv', 'Conv_3')
        if path and part.startswith(path[-1] + "."):
            path[-1] = part
        else:
            path.append(part)
    return ".".join(path)


def _call_index(node_name: str) -> int:
    """k of the op name 'Conv_k' (0 for 'Conv'): the exporter numbers repeated calls in order."""
    match = re.search(r"/Conv(?:_(\d+))?(?:/WithoutBiases)?$", node_name)
    return int(match.group(1) or 0) if match else 0


def _same_conv(node: ov.Node, layer) -> bool:
    """Channels, kernel, stride and groups of an IR conv equal those of a report layer."""
    weights = list(node.input(1).get_partial_shape().to_shape())
    groups = weights.pop(0) if node.get_type_name() == "GroupConvolution" else 1
    out_channels = weights[0] * groups
    in_shape = node.input(0).get_partial_shape()
    return (groups == layer.groups and out_channels == layer.out_channels
            and in_shape[1].get_length() == layer.in_channels
            and tuple(weights[2:]) == tuple(layer.kernel)
            and tuple(node.get_attributes()["strides"]) == tuple(layer.stride))


def _is_subsequence(short: list[str], long: list[str]) -> bool:
    remaining = iter(long)
    return all(part in remaining for part in short)


def tool_versions() -> dict[str, str]:
    import nncf
    import onnx
    import torch
    return {"torch": torch.__version__, "onnx": onnx.__version__, "openvino": ov.get_version(),
            "nncf": nncf.__version__}


def set_model_info(model: ov.Model, info: IRMetadata | dict) -> None:
    """Writes `info` (all of it, or the given declared keys) into the model_info of `model`."""
    ir_metadata.write(model, info)


def save_ir(model: ov.Model, xml_path: str | os.PathLike, precision: str) -> Path:
    """Saves `model` ("fp32" or "fp16" weights; "int8" for a quantized model, kept as it is)
    with its precision recorded in model_info."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown IR precision {precision!r}")
    xml_path = Path(xml_path)
    xml_path.parent.mkdir(parents=True, exist_ok=True)
    ir_metadata.write(model, {"precision": precision})
    ov.save_model(model, str(xml_path), compress_to_fp16=precision == "fp16")
    return xml_path


def compile_fp32(model: ov.Model | str | os.PathLike, device: str = "CPU") -> ov.CompiledModel:
    """Compiled with f32 inference precision: parity against PyTorch needs no bf16 shortcuts."""
    return ov.Core().compile_model(model if isinstance(model, ov.Model) else str(model), device, FP32_HINT)
