"""The IR metadata contract: every `rt_info["model_info"]` entry of a babo-edge IR, declared once.

export/ writes it (`to_entries` / `write`), runtime/ reads it (`read_entries` + `parse` into the
frozen `IRMetadata`), and the graph's output names are the constants below. It lives in the
package root, beside `babo_edge.files`, because it belongs to neither stage: export must not
import runtime internals for its constants, and the runtime (the torch-free base install) must
not import export/ or models/ (torch). Standard library only: no torch, no openvino (the writer
and reader take any object with OpenVINO's `set_rt_info` / `get_rt_info` / `has_rt_info`).

Each field of `IRMetadata` is one key: its name is the key, its annotation the type, its
default (if any) makes the key optional, and `meaning` in its metadata says what it is. Values
are strings in the IR (OpenVINO Model API convention): numbers as `str()`, sequences
space-separated, JSON for `model_config`, `tool_versions`, `convs` and `quantization`.

Format version 2 (version 1 borrowed Model API names with other meanings): `mean_values` /
`scale_values` are now `normalization_mean` / `normalization_std` (Model API would subtract /
divide by them before the graph; ours are applied inside the graph, stated for information),
`embedded_processing` is gone (our graph does not embed Model API's resize / layout / u8 input)
and so is `reverse_input_channels` (Model API reverses its BGR input when True; our graph takes
RGB, said by `color_space`). The runtime reads version 2 only and refuses a version 1 IR with
a one-line error telling to re-export it: the entries it reads are the same, but a v1 file
would keep the misleading keys around.
"""
from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from babo_edge.errors import BaboError


SECTION = "model_info"  # rt_info[SECTION][key]
IR_FORMAT = "babo-edge-ir"
FORMAT_VERSION = 2
SUPPORTED_FORMAT_VERSIONS = (FORMAT_VERSION,)
MODEL_TYPE = "babo_ssd"

# The graph's inputs and outputs.
INPUT = "image"  # (N, 3, H, W) float32 RGB 0..255
DETECTIONS = "detections"  # (K, 7): image, label, score, x1, y1, x2, y2 in input pixels
MASK = "mask"  # (N, 1, H, W) in {0, 1}, BABO IRs only
CLS_LOGITS, BOX_DELTAS = "cls_logits", "box_deltas"  # raw-mode head outputs, decoded outside the graph
RAW_OUTPUTS = (CLS_LOGITS, BOX_DELTAS)
OUTPUT_MODES = (DETECTIONS, "raw")  # values of the `outputs` key
BLACKED_OUT_BACKGROUND = "background"  # value of `blacked_out_anchors`


class MetadataError(BaboError, ValueError):
    """model_info that is not a babo-edge IR's, of another version, or malformed (one line)."""


def _key(meaning: str, default: Any = dataclasses.MISSING, codec: str = "") -> Any:
    return field(default=default, metadata={"meaning": meaning, "codec": codec})


@dataclass(frozen=True)
class IRMetadata:
    """The parsed model_info of an IR (JSON fields make it unhashable; compare with ==)."""

    model_type: str = _key("Model API model type of the IR (always babo_ssd)")
    format: str = _key(f"what wrote the IR (always {IR_FORMAT})")
    format_version: int = _key("version of this contract; the runtime refuses the ones it does not read")
    labels: tuple[str, ...] = _key("class names by label index, spaces replaced by '_' (Model API splits on spaces)",
                                   codec="words")
    input_height: int = _key("height of the graph's image input")
    input_width: int = _key("width of the graph's image input")
    normalization_mean: tuple[float, ...] = _key("per-channel mean (0..255 scale) the graph subtracts itself; "
                                                 "information, not a step for the caller", codec="words")
    normalization_std: tuple[float, ...] = _key("per-channel std (0..255 scale) the graph divides by itself; "
                                                "information, not a step for the caller", codec="words")
    color_space: str = _key("channel order of the image input (RGB)")
    resize_type: str = _key("how frames are brought to the input size: 'standard' = plain resize, no letterbox")
    confidence_threshold: float = _key("default score threshold of the runtime (Model API meaning)")
    iou_threshold: float = _key("NMS IoU threshold applied inside the graph")
    pre_nms_top_k: int = _key("(anchor, class) pairs NMS reads at most inside the graph, the best by score")
    max_detections: int = _key("detections kept after NMS inside the graph")
    model_config: dict = _key("the ModelConfig of the checkpoint, as a dict", codec="json")
    tool_versions: dict = _key("versions of torch, onnx, openvino and nncf that exported the IR", codec="json")
    convs: list = _key("every conv in PyTorch execution order: {node (IR friendly name), name, network, block}; "
                       "the runtime's sparsity counters need it", codec="json")
    mask_input_height: int | None = _key("height of the OMG's input (BABO IRs only; absent: vanilla)", None)
    mask_input_width: int | None = _key("width of the OMG's input (BABO IRs only; absent: vanilla)", None)
    blacked_out_anchors: str | None = _key(
        f"'{BLACKED_OUT_BACKGROUND}': anchors on blacked-out cells score 0 before top-k and NMS (mask-aware "
        "post-processing, needed for sparse execution); absent: not mask-aware", None)
    outputs: str = _key(f"'{DETECTIONS}': decoded and NMS-ed in the graph; 'raw': {CLS_LOGITS} and {BOX_DELTAS}",
                        DETECTIONS)
    precision: str | None = _key("fp32, fp16 or int8, written when the IR is saved; absent: never saved", None)
    quantization: dict | None = _key("the INT8 quantization summary (INT8 IRs only)", None, codec="json")

    @property
    def input_hw(self) -> tuple[int, int]:
        return self.input_height, self.input_width

    @property
    def mask_input_hw(self) -> tuple[int, int] | None:
        """None: a vanilla model, no OMG."""
        return None if self.mask_input_height is None else (self.mask_input_height, self.mask_input_width)

    @property
    def mask_aware(self) -> bool:
        return self.blacked_out_anchors == BLACKED_OUT_BACKGROUND


KEYS: dict[str, dataclasses.Field] = {f.name: f for f in dataclasses.fields(IRMetadata)}
REQUIRED = tuple(name for name, f in KEYS.items() if f.default is dataclasses.MISSING)


def meaning(key: str) -> str:
    return KEYS[key].metadata["meaning"]


def encode(key: str, value: Any) -> str:
    """The string the IR stores for `value` of `key`."""
    if key not in KEYS:
        raise KeyError(f"{key!r} is not a babo-edge model_info key")
    codec = KEYS[key].metadata["codec"]
    if codec == "json":
        return json.dumps(value)
    if codec == "words":
        words = [str(v) for v in value]
        if any(not word or word.split() != [word] for word in words):
            raise ValueError(f"model_info {key!r}: every entry must be one non-empty word, got {words}")
        return " ".join(words)
    return str(value)


def _decoder(key: str):
    f = KEYS[key]
    codec = f.metadata["codec"]
    if codec == "json":
        return json.loads
    kind = f.type.split(" | ")[0]
    if codec == "words":
        item = float if "float" in kind else str
        return lambda text: tuple(item(word) for word in text.split())
    return {"int": int, "float": float, "str": str}[kind]


def to_entries(metadata: IRMetadata) -> dict[str, str]:
    """Every key with a value (optional keys left at None are not written)."""
    return {key: encode(key, value) for key in KEYS
            if (value := getattr(metadata, key)) is not None}


def write(model: Any, metadata: IRMetadata | Mapping[str, Any]) -> None:
    """Sets model_info entries of `model` (an openvino.Model): all of `metadata`, or the given
    keys of a mapping (e.g. {"precision": "fp16"}; a str value is taken as already encoded),
    each key checked against the declaration."""
    if isinstance(metadata, IRMetadata):
        entries = to_entries(metadata)
    else:
        entries = {key: value if isinstance(value, str) and key in KEYS else encode(key, value)
                   for key, value in metadata.items()}
    for key, value in entries.items():
        if key not in KEYS:
            raise KeyError(f"{key!r} is not a babo-edge model_info key")
        model.set_rt_info(value, [SECTION, key])


def read_entries(model: Any) -> dict[str, str]:
    """The model_info entries of `model` as strings ({} when it has none)."""
    if not model.has_rt_info([SECTION]):
        return {}
    return {key: model.get_rt_info([SECTION, key]).astype(str) for key in model.get_rt_info([SECTION]).astype(dict)}


def read_entry(model: Any, key: str) -> Any | None:
    """One parsed entry of `model` (None when absent), without checking the rest."""
    if key not in KEYS:
        raise KeyError(f"{key!r} is not a babo-edge model_info key")
    if not model.has_rt_info([SECTION, key]):
        return None
    return _decoder(key)(model.get_rt_info([SECTION, key]).astype(str))


def parse(entries: Mapping[str, str]) -> IRMetadata:
    """Checks the format and version, then parses every declared key; unknown keys are ignored.
    Raises a one-line MetadataError."""
    if entries.get("format") != IR_FORMAT:
        found = f"model_info format {entries['format']!r}" if "format" in entries else "no model_info format"
        raise MetadataError(f"not a babo-edge IR ({found}); export it with export/to_ir.py")
    supported = ", ".join(map(str, SUPPORTED_FORMAT_VERSIONS))
    if entries.get("format_version") not in {str(v) for v in SUPPORTED_FORMAT_VERSIONS}:
        raise MetadataError(f"babo-edge IR format version {entries.get('format_version')} is not supported by this "
                            f"runtime (supported: {supported}); re-export it with export/to_ir.py")
    values = {}
    for key, f in KEYS.items():
        if key not in entries:
            if f.default is dataclasses.MISSING:
                raise MetadataError(f"model_info has no {key!r}")
            continue
        try:
            values[key] = _decoder(key)(entries[key])
        except ValueError:
            raise MetadataError(f"model_info {key!r} = {entries[key]!r} is malformed") from None
    return IRMetadata(**values)
