"""The IR metadata contract (babo_edge/ir_metadata.py): every declared key written and read back."""
import subprocess
import sys
import typing

import numpy as np
import openvino as ov
import openvino.opset13 as ops
import pytest

from babo_edge import ir_metadata
from babo_edge.ir_metadata import IRMetadata, MetadataError


def full_metadata() -> IRMetadata:
    """Every key with a value, optional ones included."""
    return IRMetadata(
        model_type=ir_metadata.MODEL_TYPE, format=ir_metadata.IR_FORMAT, format_version=ir_metadata.FORMAT_VERSION,
        labels=("red_disc", "square"), input_height=128, input_width=96,
        normalization_mean=(123.675, 116.28, 103.53), normalization_std=(58.395, 57.12, 57.375),
        color_space="RGB", resize_type="standard", confidence_threshold=0.05, iou_threshold=0.45,
        pre_nms_top_k=400, max_detections=100, model_config={"num_classes": 2, "input_size": [128, 96]},
        tool_versions={"openvino": "x"}, convs=[{"node": "/m/Conv", "name": "c", "network": "od", "block": "b"}],
        mask_input_height=64, mask_input_width=48, blacked_out_anchors=ir_metadata.BLACKED_OUT_BACKGROUND,
        outputs=ir_metadata.DETECTIONS, precision="int8", quantization={"method": "quantize"})


def tiny_model() -> ov.Model:
    image = ops.parameter([1, 3, 4, 4], np.float32, name=ir_metadata.INPUT)
    return ov.Model([ops.result(ops.relu(image))], [image], "tiny")


def test_every_key_is_declared_with_a_meaning():
    hints = typing.get_type_hints(IRMetadata)
    assert set(hints) == set(ir_metadata.KEYS)
    assert all(ir_metadata.meaning(key) for key in ir_metadata.KEYS)
    assert set(ir_metadata.REQUIRED) < set(ir_metadata.KEYS)
    # Model API names that mean something else there are not ours.
    assert not {"mean_values", "scale_values", "embedded_processing", "reverse_input_channels"} & set(ir_metadata.KEYS)


def test_every_declared_key_is_written_and_read_back():
    metadata = full_metadata()
    entries = ir_metadata.to_entries(metadata)
    assert set(entries) == set(ir_metadata.KEYS) and all(isinstance(v, str) for v in entries.values())
    model = tiny_model()
    ir_metadata.write(model, metadata)
    assert ir_metadata.read_entries(model) == entries
    assert ir_metadata.parse(ir_metadata.read_entries(model)) == metadata
    assert ir_metadata.read_entry(model, "convs") == metadata.convs


def test_round_trip_through_a_saved_ir(tmp_path):
    model = tiny_model()
    ir_metadata.write(model, full_metadata())
    ov.save_model(model, str(tmp_path / "model.xml"))
    read = ov.Core().read_model(str(tmp_path / "model.xml"))
    assert ir_metadata.parse(ir_metadata.read_entries(read)) == full_metadata()


def test_optional_keys_take_their_defaults():
    required = {key: value for key, value in ir_metadata.to_entries(full_metadata()).items()
                if key in ir_metadata.REQUIRED}
    parsed = ir_metadata.parse(required)
    assert parsed.mask_input_hw is None and not parsed.mask_aware and parsed.precision is None
    assert parsed.outputs == ir_metadata.DETECTIONS and parsed.quantization is None


@pytest.mark.parametrize("changes, message", [
    ({"format": None}, "no model_info format"),
    ({"format_version": "1"}, "format version 1 is not supported .*re-export it"),
    ({"labels": None}, "model_info has no 'labels'"),
    ({"pre_nms_top_k": "many"}, "'pre_nms_top_k' = 'many' is malformed"),
    ({"model_config": "{"}, "'model_config' = '{' is malformed"),
])
def test_bad_entries_give_one_line_errors(changes, message):
    entries = {**ir_metadata.to_entries(full_metadata()), **changes}
    entries = {key: value for key, value in entries.items() if value is not None}
    with pytest.raises(MetadataError, match=message) as error:
        ir_metadata.parse(entries)
    assert "\n" not in str(error.value)


def test_writer_refuses_undeclared_keys_and_labels_with_spaces():
    with pytest.raises(KeyError, match="not a babo-edge model_info key"):
        ir_metadata.write(tiny_model(), {"mean_values": "1 2 3"})
    with pytest.raises(ValueError, match="one non-empty word"):
        ir_metadata.encode("labels", ["red disc"])


def test_the_contract_imports_neither_torch_nor_openvino():
    code = ("import sys\nfrom babo_edge import ir_metadata\n"
            "assert not {'torch', 'openvino'} & set(sys.modules), sorted(sys.modules)\n")
    subprocess.run([sys.executable, "-c", code], check=True)
