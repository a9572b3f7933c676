"""The torch-free device runtime: IR metadata, frames, parity with PyTorch, async, devices."""
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import openvino as ov
import openvino.opset13 as ops
import pytest

from babo_edge.export import parity
from babo_edge import ir_metadata
from babo_edge.runtime.detector import (Detector, FrameError, ModelError, Result, postprocess, preprocess,
                              read_model_info)
from babo_edge.runtime.devices import DeviceError, check_static_for_npu, resolve_device
from tiny import CONFIG, FP32, export_ir

REPO = Path(__file__).resolve().parents[1]
@pytest.fixture(scope="module")
def detector(xml):
    return Detector(xml, config=FP32)


def as_graph_outputs(result: Result, input_hw) -> dict[str, np.ndarray]:
    """A Result back in model-input pixels, as the graph's outputs, for `parity.compare`."""
    (frame_h, frame_w), (input_h, input_w) = result.frame_hw, input_hw
    boxes = result.boxes / np.array([frame_w / input_w, frame_h / input_h] * 2, dtype=np.float32)
    detections = np.column_stack([np.zeros(len(boxes)), result.labels, result.scores, boxes]).astype(np.float32)
    return {"detections": detections, "mask": result.mask[None, None].astype(np.float32)}


def test_results_match_pytorch_in_frame_pixels(tiny_model, detector, calib_frames):
    frame = cv2.resize(calib_frames[0], (300, 200))
    inputs = preprocess(frame, CONFIG.input_size)
    result = detector(frame)
    compared = parity.compare(parity.torch_runner(tiny_model), lambda _: as_graph_outputs(result, CONFIG.input_size),
                              [inputs])
    assert compared.matched > 0 and 0 < compared.mask_intersection < compared.mask_pixels
    assert compared.violations(parity.FP32_TOLERANCE) == []
    assert result.boxes.dtype == np.float32 and result.labels.dtype == np.int64
    assert (result.boxes[:, 2] > 100).any() and result.boxes[:, [2, 3]].max(axis=0).tolist() <= [300, 200]
    assert np.all(np.diff(result.scores) <= 0) and result.scores.min() >= detector.info.confidence_threshold
    assert result.label_names == [detector.labels[label] for label in result.labels]
    assert result.mask_at_frame_size().shape == (200, 300)
    assert result.fg_ratio == pytest.approx(result.mask.mean()) and 0 < result.fg_ratio < 1


def test_metadata_comes_from_the_ir(detector):
    assert detector.labels == ("red_disc", "square", "triangle")
    assert detector.input_hw == (128, 128) and detector.info.mask_input_hw == (64, 64)
    assert (detector.info.precision, detector.info.model_type, detector.info.format_version) == (
        "fp32", "babo_ssd", ir_metadata.FORMAT_VERSION)
    assert detector.score_threshold == detector.info.confidence_threshold == 0.05
    assert detector.device == "CPU" and isinstance(detector.compiled, ov.CompiledModel)


def test_gray_bgra_and_odd_frames(detector, calib_frames):
    bgr = cv2.resize(calib_frames[1], (53, 37))
    gray = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)
    expected = detector(cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR))
    for frame in (gray, gray[..., None]):
        assert_same_result(detector(frame), expected)
    assert_same_result(detector(cv2.cvtColor(bgr, cv2.COLOR_BGR2BGRA)), detector(bgr))
    assert_same_result(detector(np.ascontiguousarray(bgr[:, ::-1])), detector(bgr[:, ::-1]))  # a view works
    tiny = detector(np.full((1, 1, 3), 200, np.uint8))
    assert tiny.frame_hw == (1, 1) and np.all(tiny.boxes <= 1) and tiny.mask_at_frame_size().shape == (1, 1)


@pytest.mark.parametrize("frame", [np.zeros((20, 30, 3), np.float32), np.zeros((0, 0, 3), np.uint8),
                                   np.zeros((20, 30, 5), np.uint8), np.zeros((2, 20, 30, 3), np.uint8), None],
                         ids=["float", "empty", "5-channels", "4-d", "none"])
def test_bad_frames_raise_frame_error(detector, frame):
    with pytest.raises(FrameError):
        detector(frame)
    with pytest.raises(FrameError):
        detector.infer_async(frame)


def test_async_results_in_submission_order_with_userdata(xml, calib_frames):
    sizes = [(37, 53), (200, 300), (128, 128), (480, 640), (64, 300), (301, 99)]
    batch = [cv2.resize(calib_frames[i % len(calib_frames)], (w, h)) for i, (h, w) in enumerate(sizes)]
    sync = Detector(xml)
    expected = [sync(frame) for frame in batch]
    queued = Detector(xml, hint="THROUGHPUT", num_requests=3)
    assert queued.num_requests == 3
    for i, frame in enumerate(batch):
        queued.infer_async(frame, userdata=f"frame {i}")
    queued.wait_all()
    delivered = list(queued.results())
    assert [userdata for userdata, _ in delivered] == [f"frame {i}" for i in range(len(batch))]
    for (_, result), want in zip(delivered, expected):
        assert_same_result(result, want)
    assert list(queued.results()) == []  # each result is yielded once

    received = []
    with_callback = Detector(xml, hint="THROUGHPUT", callback=lambda userdata, result: received.append(userdata))
    assert with_callback.num_requests == with_callback.compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")
    for i, frame in enumerate(batch):
        with_callback.infer_async(frame, i)
    with_callback.wait_all()
    assert received == list(range(len(batch))) and list(with_callback.results()) == []


def test_failing_callback_is_reported_by_wait_all(xml, calib_frames):
    def fail(userdata, result):
        raise KeyError(userdata)
    failing = Detector(xml, callback=fail)
    failing.infer_async(calib_frames[0], "boom")
    with pytest.raises(RuntimeError, match="boom"):
        failing.wait_all()


def assert_same_result(actual: Result, expected: Result):
    assert actual.frame_hw == expected.frame_hw
    np.testing.assert_allclose(actual.boxes, expected.boxes, atol=1e-3)
    np.testing.assert_array_equal(actual.labels, expected.labels)
    np.testing.assert_allclose(actual.scores, expected.scores, atol=1e-5)
    np.testing.assert_array_equal(actual.mask, expected.mask)


def test_postprocess_threshold_scaling_and_vanilla_outputs():
    detections = np.array([[0, 1, 0.3, 10, 20, 64, 128], [0, 0, 0.9, 0, 0, 32, 32], [0, 2, 0.1, 1, 1, 2, 2]],
                          np.float32)
    result = postprocess({"detections": detections}, (256, 64), (128, 64), 0.2, ("a", "b", "c"))
    np.testing.assert_allclose(result.boxes, [[0, 0, 32, 64], [10, 40, 64, 256]])
    assert result.label_names == ["a", "b"] and result.mask is None and result.fg_ratio is None
    assert result.mask_at_frame_size() is None


def test_torch_free_in_a_fresh_interpreter(xml):
    code = ("import sys, numpy as np\n"
            "from babo_edge.runtime.detector import Detector\n"
            f"result = Detector({str(xml)!r})(np.zeros((48, 64, 3), np.uint8))\n"
            "print(result.mask.shape, sorted(m for m in ('torch', 'nncf', 'onnx') if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], cwd="/", capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "(128, 128) []"


# --- devices ---

def fake_core(*devices):
    return SimpleNamespace(available_devices=list(devices))


@pytest.mark.parametrize("name, devices, expected", [
    ("cpu", ["CPU"], "CPU"),
    ("GPU", ["CPU", "GPU.0", "GPU.1"], "GPU"),
    ("GPU.0", ["CPU", "GPU"], "GPU.0"),
    ("GPU.1", ["CPU", "GPU.0", "GPU.1"], "GPU.1"),
    ("NPU", ["CPU", "NPU"], "NPU"),
    ("AUTO", ["CPU"], "AUTO"),
    ("AUTO:GPU, CPU", ["CPU", "GPU"], "AUTO:GPU,CPU"),
    ("AUTO:-GPU", ["CPU"], "AUTO:-GPU"),
    ("HETERO:NPU,CPU", ["CPU", "NPU"], "HETERO:NPU,CPU"),
    ("MULTI:GPU.1,CPU", ["CPU", "GPU.0", "GPU.1"], "MULTI:GPU.1,CPU"),
    ("BATCH:GPU(4)", ["CPU", "GPU"], "BATCH:GPU(4)"),
])
def test_resolve_device_accepts_available_devices(name, devices, expected):
    assert resolve_device(name, fake_core(*devices)) == expected


@pytest.mark.parametrize("name, devices", [
    ("GPU", ["CPU"]), ("GPU.2", ["CPU", "GPU.0", "GPU.1"]), ("NPU", ["CPU", "GPU"]), ("TPU", ["CPU"]),
    ("AUTO:GPU,CPU", ["CPU"]), ("HETERO:NPU,CPU", ["CPU"]), ("HETERO", ["CPU"]),
])
def test_resolve_device_refuses_absent_devices(name, devices):
    with pytest.raises(DeviceError) as error:
        resolve_device(name, fake_core(*devices))
    message = str(error.value)
    assert "\n" not in message
    assert ("needs a list of devices" if name == "HETERO" else "available: " + ", ".join(devices)) in message


def test_absent_device_on_this_machine_lists_its_devices(xml):
    available = ov.Core().available_devices
    absent = next(name for name in ("NPU", "GPU") if not any(d.startswith(name) for d in available))
    with pytest.raises(DeviceError, match=f"no {absent} on this machine .*; available: {', '.join(available)}$"):
        Detector(xml, device=absent)


@pytest.mark.parametrize("name", ["MYRIAD", "hddl", "AUTO:MYRIAD,CPU", "HETERO:HDDL,CPU"])
def test_movidius_devices_are_explained(name):
    for devices, offer in ((["CPU"], "use AUTO"), (["CPU", "NPU"], "use NPU")):
        with pytest.raises(DeviceError) as error:
            resolve_device(name, fake_core(*devices))
        message = str(error.value)
        assert "removed in OpenVINO 2023.0" in message and "pip wheel" in message and offer in message
        assert "Neural Compute Stick 2" in message and "2022.3 LTS" in message and "\n" not in message


def test_npu_with_dynamic_batch_is_refused_before_compiling(tmp_path, tiny_model):
    dynamic = export_ir(tiny_model, tmp_path, dynamic_batch=True)
    assert Detector(dynamic)(np.zeros((20, 30, 3), np.uint8)).mask.shape == (128, 128)  # runs on CPU
    core = ov.Core()
    npu_core = SimpleNamespace(available_devices=["CPU", "NPU"], read_model=core.read_model,
                               compile_model=lambda *args: pytest.fail("compile_model was called"))
    for device in ("NPU", "AUTO:NPU,CPU", "HETERO:NPU,CPU"):
        with pytest.raises(DeviceError, match="static input shapes.*without --dynamic-batch"):
            Detector(dynamic, device=device, core=npu_core)
    static = core.read_model(str(dynamic))
    static.reshape([1, 3, *CONFIG.input_size])
    check_static_for_npu(static, "NPU")  # static: nothing raised
    check_static_for_npu(core.read_model(str(dynamic)), "CPU")  # CPU runs dynamic shapes


# --- model files ---

def test_missing_or_foreign_files_raise_model_error(tmp_path, xml):
    cases = {"missing": tmp_path / "absent.xml", "onnx": xml.parent.parent / "model.onnx"}
    (tmp_path / "no_bin.xml").write_text("<net name='x' version='11'></net>")
    (tmp_path / "junk.xml").write_text("hello")
    (tmp_path / "junk.bin").write_bytes(b"\0")
    (tmp_path / "broken.xml").write_text("<?xml version='1.0'?>\n<net name='x' version='11'><layers>")
    (tmp_path / "broken.bin").write_bytes(b"\0")
    cases.update(no_bin=tmp_path / "no_bin.xml", junk=tmp_path / "junk.xml", broken=tmp_path / "broken.xml")
    for case, path in cases.items():
        with pytest.raises(ModelError) as error:
            Detector(path)
        assert path.name in str(error.value), case
        assert "\n" not in str(error.value), case


def with_info(model: ov.Model, **changes) -> ov.Model:
    """A copy of `model` whose model_info has `changes` (None: entry removed)."""
    entries = {**read_model_info(model), **changes}
    copy = model.clone()
    copy.set_rt_info({}, ["model_info"])
    for key, value in entries.items():
        if value is not None:
            copy.set_rt_info(value, ["model_info", key])
    return copy


@pytest.mark.parametrize("changes, message", [
    ({"format": "other-ir"}, "not a babo-edge IR .*'other-ir'"),
    ({"format": None}, "not a babo-edge IR \\(no model_info format\\)"),
    ({"format_version": "99"}, "format version 99 is not supported"),
    # Version 1 used Model API names with other meanings (mean_values, embedded_processing): re-export.
    ({"format_version": "1"}, "format version 1 is not supported .*re-export it with export/to_ir.py"),
    ({"confidence_threshold": "high"}, "'confidence_threshold' = 'high' is malformed"),
    ({"labels": None}, "model_info has no 'labels'"),
    ({"input_height": "wide"}, "'input_height' = 'wide' is malformed"),
    ({"input_height": "256"}, "does not match model_info size \\(256, 128\\)"),
])
def test_wrong_metadata_raises_model_error(xml, changes, message):
    model = ov.Core().read_model(str(xml))
    with pytest.raises(ModelError, match=message):
        Detector.from_model(with_info(model, **changes))


def test_model_without_metadata_or_raw_outputs_is_refused(xml):
    image = ops.parameter([1, 3, 128, 128], np.float32, name="image")
    logits, deltas = ops.relu(image), ops.sigmoid(image)
    logits.output(0).set_names({"cls_logits"})
    deltas.output(0).set_names({"box_deltas"})
    raw = ov.Model([ops.result(logits), ops.result(deltas)], [image], "raw")
    with pytest.raises(ModelError, match="not a babo-edge IR"):
        Detector.from_model(raw)
    for key, value in read_model_info(ov.Core().read_model(str(xml))).items():
        raw.set_rt_info(value, ["model_info", key])
    with pytest.raises(ModelError, match="raw-mode IR"):
        Detector.from_model(raw)


def test_from_model_compiles_an_in_memory_copy(xml, detector, calib_frames):
    copy = Detector.from_model(ov.Core().read_model(str(xml)).clone(), config=FP32, score_threshold=0.2)
    expected = detector(calib_frames[2])
    result = copy(calib_frames[2])
    keep = expected.scores >= 0.2
    np.testing.assert_allclose(result.boxes, expected.boxes[keep], atol=1e-3)
    assert set(copy.run(preprocess(calib_frames[2], copy.input_hw))) == {"detections", "mask"}


def test_unknown_hint_is_refused(xml):
    with pytest.raises(ValueError, match="performance hint 'FAST'"):
        Detector(xml, hint="FAST")
