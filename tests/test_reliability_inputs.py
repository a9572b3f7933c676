"""Bad input battery (issue 14): odd frames, image folders with junk and symlinks, broken COCO
files, a checkpoint from a newer format, an IR from another tool. Each input gives a correct
result or a one-line error through the library's own error classes, never a crash or garbage."""
import copy
import os
import warnings

import numpy as np
import openvino as ov
import openvino.opset13 as ops
import pytest
import torch
from PIL import Image

from babo_edge.calibration.coco import CocoDetection
from babo_edge.calibration.errors import DatasetError
from babo_edge.calibration.folder import ImageFolder
from babo_edge.models.checkpoint import FORMAT_VERSION, CheckpointError, load_checkpoint, load_model
from babo_edge.runtime.detector import Detector, FrameError, ModelError
from test_data_coco import COCO, write_dataset
from test_runtime_detector import assert_same_result
from tiny import FP32


def one_line(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert message and "\n" not in message
    return message


@pytest.fixture(scope="module")
def detector(xml):
    return Detector(xml, config=FP32)


@pytest.fixture(scope="module")
def bgra(calib_frames):
    """A real 60x80 BGRA frame (alpha varies: it must be ignored)."""
    import cv2
    bgr = cv2.resize(calib_frames[0], (80, 60))
    alpha = np.arange(bgr.size // 3, dtype=np.uint8).reshape(bgr.shape[:2])
    return np.dstack([bgr, alpha])


def assert_sane(result, frame_hw):
    assert result.frame_hw == frame_hw
    height, width = frame_hw
    assert np.isfinite(result.boxes).all() and np.isfinite(result.scores).all()
    assert (result.boxes >= 0).all() and (result.boxes[:, [0, 2]] <= width).all()
    assert (result.boxes[:, [1, 3]] <= height).all()
    assert result.mask.shape == (128, 128) and set(np.unique(result.mask)) <= {0, 1}
    assert result.mask_at_frame_size().shape == frame_hw


@pytest.mark.parametrize("shape", [(1, 1, 3), (1, 1), (10, 3000, 3), (3000, 10), (2, 2, 4), (1, 5000, 3)])
def test_extreme_sizes_give_results_in_frame_pixels(detector, shape):
    frame = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    assert_sane(detector(frame), shape[:2])


def layouts(bgra):
    """The same BGR pixels as views of every memory layout, each paired with its contiguous copy."""
    bgr = bgra[..., :3]  # channel slice: not contiguous
    read_only = np.ascontiguousarray(bgr)
    read_only.setflags(write=False)
    from_bytes = np.frombuffer(bytes(np.ascontiguousarray(bgr).data), np.uint8).reshape(bgr.shape)  # read-only
    return {
        "channel-slice": bgr, "flipped": bgr[::-1, ::-1], "strided": bgra[::2, ::3, :3],
        "transposed": bgr.transpose(1, 0, 2), "fortran": np.asfortranarray(bgr), "read-only": read_only,
        "read-only-buffer": from_bytes, "gray-column-view": bgra[:, :, 1], "gray-1-channel-view": bgra[:, :, 1:2],
        "broadcast": np.broadcast_to(bgr[:1, :1], (30, 40, 3)),
    }


@pytest.mark.parametrize("case", ["channel-slice", "flipped", "strided", "transposed", "fortran", "read-only",
                                  "read-only-buffer", "gray-column-view", "gray-1-channel-view", "broadcast"])
def test_any_memory_layout_gives_the_contiguous_result(detector, bgra, case):
    view = layouts(bgra)[case]
    assert not view.flags.c_contiguous or not view.flags.writeable
    before = view.copy()
    assert_same_result(detector(view), detector(np.ascontiguousarray(view)))
    np.testing.assert_array_equal(view, before)  # the caller's frame is not written


def test_bgra_ignores_alpha(detector, bgra):
    assert_same_result(detector(bgra), detector(np.ascontiguousarray(bgra[..., :3])))
    assert_same_result(detector(bgra), detector(np.dstack([bgra[..., :3], np.zeros(bgra.shape[:2], np.uint8)])))


def float_frames():
    rng = np.random.default_rng(0)
    with_nan = rng.uniform(0, 255, (20, 30, 3)).astype(np.float32)
    with_nan[3, 4, 1] = np.nan
    with_inf = rng.uniform(0, 255, (20, 30, 3))
    with_inf[5, 6] = np.inf
    return {
        "uint16": rng.integers(0, 65536, (20, 30, 3), dtype=np.uint16),
        "uint16-gray": rng.integers(0, 65536, (20, 30), dtype=np.uint16),
        "float32-0..255": rng.uniform(0, 255, (20, 30, 3)).astype(np.float32),
        "float32-0..1": rng.uniform(0, 1, (20, 30, 3)).astype(np.float32),
        "float64-0..255": rng.uniform(0, 255, (20, 30, 3)),
        "float64-0..1": rng.uniform(0, 1, (20, 30, 3)),
        "float32-nan": with_nan, "float64-inf": with_inf,
        "int8": rng.integers(-128, 128, (20, 30, 3), dtype=np.int8),
        "bool": rng.integers(0, 2, (20, 30), dtype=bool),
    }


@pytest.mark.parametrize("case", list(float_frames()))
def test_other_dtypes_are_refused_never_rescaled(detector, case):
    """The documented fallback: no guessed scale, a FrameError saying to convert to uint8."""
    frame = float_frames()[case]
    for run in (detector, detector.infer_async):
        with pytest.raises(FrameError) as error:
            run(frame)
        message = one_line(error)
        assert f"got {frame.dtype}" in message and "convert it to uint8" in message


@pytest.mark.parametrize("frame, expected", [
    (np.zeros((0, 0, 3), np.uint8), "empty frame"), (np.zeros((0, 30, 3), np.uint8), "empty frame"),
    (np.zeros((20, 0), np.uint8), "empty frame"), (np.zeros((0,), np.uint8), "got shape (0,)"),
    (np.zeros((30,), np.uint8), "got shape (30,)"), (np.uint8(7), "numpy array, got uint8"),
    (np.array(7, np.uint8), "got shape ()"), (np.zeros((1, 20, 30, 3), np.uint8), "got shape (1, 20, 30, 3)"),
    (np.zeros((20, 30, 2), np.uint8), "got shape (20, 30, 2)"), (np.zeros((20, 30, 0), np.uint8), "got shape"),
    ([[0, 0], [0, 0]], "numpy array, got list"), (b"\0" * 12, "numpy array, got bytes"),
], ids=["empty", "no-rows", "no-columns", "empty-1d", "1d", "numpy-scalar", "0d", "4d", "2-channels",
        "0-channels", "list", "bytes"])
def test_empty_and_wrong_ndim_frames_raise_one_line_frame_errors(detector, frame, expected):
    for run in (detector, detector.infer_async):
        with pytest.raises(FrameError) as error:
            run(frame)
        assert expected in one_line(error)
    detector.wait_all()  # nothing was submitted: nothing pending, nothing failed


# --- image folders ---

def test_image_folder_with_non_images_broken_symlinks_and_loops(tmp_path):
    root = tmp_path / "photos"
    (root / "sub").mkdir(parents=True)
    image = np.full((8, 12, 3), (10, 200, 30), np.uint8)
    Image.fromarray(image).save(root / "a.png")
    Image.fromarray(image).save(root / "sub" / "b.jpg", quality=95)
    (root / "notes.txt").write_text("not an image, no image extension")
    (root / "fake.jpg").write_text("not an image")
    (root / "empty.png").write_bytes(b"")
    (root / "folder.png").mkdir()  # a folder with an image extension
    os.mkfifo(root / "pipe.jpg")  # a FIFO: opening it would block forever
    (root / "link.png").symlink_to("a.png")
    (root / "broken.png").symlink_to("missing.png")
    (root / "loop.png").symlink_to("loop.png")
    (root / "ping.png").symlink_to("pong.png")
    (root / "pong.png").symlink_to("ping.png")
    (root / "sub" / "up").symlink_to("..")  # a folder loop
    (root / "sub" / "dir.png").symlink_to("../folder.png")

    for recursive in (False, True):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            folder = ImageFolder(root, recursive=recursive)
        names = [name for name, _ in folder]
        assert names == (["a.png", "link.png", "sub/b.jpg"] if recursive else ["a.png", "link.png"])
        np.testing.assert_array_equal(folder[1][1], image)
        reasons = dict(folder.skipped)
        expected = {"broken.png", "empty.png", "fake.jpg", "loop.png", "ping.png", "pong.png"}
        assert set(reasons) == expected | ({"sub/dir.png"} if recursive else set())
        for name in ("broken.png", "loop.png", "ping.png"):
            assert "broken symbolic link" in reasons[name]
        assert "not an image" in reasons["fake.jpg"] and "not a regular file" in reasons.get("sub/dir.png", "not a regular file")
        assert all("\n" not in reason for reason in reasons.values())
        assert len(caught) == len(reasons) and all(str(root) in str(w.message) for w in caught)


def test_image_folder_of_only_broken_links_is_an_error(tmp_path):
    (tmp_path / "broken.png").symlink_to("missing.png")
    (tmp_path / "loop.jpg").symlink_to("loop.jpg")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(DatasetError, match="contains no readable images") as error:
            ImageFolder(tmp_path)
    one_line(error)


# --- COCO files ---

def coco_with(change):
    coco = copy.deepcopy(COCO)
    change(coco)
    return coco


def drop(section, index, key):
    return lambda coco: coco[section][index].pop(key)


@pytest.mark.parametrize("change, message", [
    (lambda coco: coco.pop("images"), "has no 'images' list"),
    (lambda coco: coco.pop("categories"), "has no 'categories' list"),
    (lambda coco: coco.update(annotations={"1": {}}), "has no 'annotations' list"),
    (drop("images", 0, "id"), "images[0] has no 'id'"),
    (drop("images", 2, "height"), "images[2] has no 'height'"),
    (drop("categories", 1, "name"), "categories[1] has no 'name'"),
    (drop("annotations", 3, "bbox"), "annotations[3] has no 'bbox'"),
    (drop("annotations", 0, "image_id"), "annotations[0] has no 'image_id'"),
    (drop("annotations", 0, "category_id"), "annotations[0] has no 'category_id'"),
    (lambda coco: coco["annotations"].append("oops"), "annotations[8] has no 'id'"),
    (lambda coco: coco["images"][3].update(id=7), "images has a duplicate id 7"),
    (lambda coco: coco["categories"].append({"id": 3, "name": "cow"}), "categories has a duplicate id 3"),
    (lambda coco: coco["annotations"][5].update(id=2), "annotations has a duplicate id 2"),
    (lambda coco: coco["annotations"][2].update(category_id=4), "annotation 3 refers to unknown category id 4"),
    (lambda coco: coco["annotations"][2].update(category_id="3"), "annotation 3 refers to unknown category id '3'"),
    (lambda coco: coco["annotations"][2].update(image_id=8), "annotation 3 refers to unknown image id 8"),
    (lambda coco: coco["annotations"][1].update(bbox=[1, 2, 3]), "annotation 2 has a malformed bbox [1, 2, 3]"),
    (lambda coco: coco["annotations"][1].update(bbox=[1, 2, "3", 4]), "annotation 2 has a malformed bbox"),
    (lambda coco: coco["annotations"][1].update(bbox=None), "annotation 2 has a malformed bbox None"),
    (lambda coco: coco["annotations"][1].update(bbox=[1, 2, float("nan"), 4]), "malformed bbox [1, 2, nan, 4]"),
    (lambda coco: coco["annotations"][1].update(bbox=[1, 2, float("inf"), 4]), "malformed bbox [1, 2, inf, 4]"),
], ids=lambda value: None if callable(value) else value.split(" has")[0].split(" refers")[0][:40])
def test_broken_coco_files_give_one_line_dataset_errors(tmp_path, change, message):
    ann_file, images = write_dataset(tmp_path, coco_with(change))
    with pytest.raises(DatasetError) as error:
        CocoDetection(ann_file, images)
    text = one_line(error)
    assert message in text and str(ann_file) in text


def test_boxes_outside_the_image_are_clipped_and_zero_area_boxes_dropped(tmp_path):
    boxes = {11: [-20, -20, 30, 30], 12: [35, 25, 100, 100], 13: [40, 0, 5, 5], 14: [0, 30, 5, 5],
             15: [-10, 5, 5, 5], 16: [5, 5, 0, 0], 17: [5, 5, 3, 0], 18: [5, 5, -3, 4], 19: [-100, -100, 1000, 1000]}
    annotations = [{"id": i, "image_id": 7, "category_id": 5, "bbox": box} for i, box in boxes.items()]
    ann_file, images = write_dataset(tmp_path, coco_with(lambda coco: coco.update(annotations=annotations)))
    sample = CocoDetection(ann_file, images)[2]  # scene.png, 40x30
    np.testing.assert_array_equal(sample.boxes, [[0, 0, 10, 10], [35, 25, 40, 30], [0, 0, 40, 30]])
    assert sample.labels.tolist() == [1, 1, 1] and sample.instance_masks.shape == (3, 30, 40)
    assert sample.instance_masks.reshape(3, -1).sum(axis=1).tolist() == [100, 25, 1200]


def test_an_image_whose_boxes_are_all_dropped_has_empty_arrays(tmp_path):
    annotations = [{"id": 1, "image_id": 7, "category_id": 5, "bbox": [50, 50, 5, 5]},
                   {"id": 2, "image_id": 7, "category_id": 5, "bbox": [1, 1, 0, 5]}]
    ann_file, images = write_dataset(tmp_path, coco_with(lambda coco: coco.update(annotations=annotations)))
    sample = CocoDetection(ann_file, images)[2]
    assert sample.boxes.shape == (0, 4) and sample.labels.shape == (0,) and sample.instance_masks.shape == (0, 30, 40)


def test_coco_json_of_another_shape_is_refused(tmp_path):
    _, images = write_dataset(tmp_path)
    for name, text in {"null.json": "null", "number.json": "3", "empty.json": "", "nul.json": "\0"}.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(DatasetError) as error:
            CocoDetection(tmp_path / name, images)
        assert name in one_line(error)


# --- checkpoints and IRs from elsewhere ---

def test_checkpoint_from_a_newer_format_version_is_refused_naming_both_versions(saved, tmp_path):
    _, path = saved
    data = torch.load(path, weights_only=True)
    data["format_version"] = FORMAT_VERSION + 1
    data["new_field_of_a_later_release"] = {"x": torch.zeros(2)}
    newer = tmp_path / "newer.pt"
    torch.save(data, newer)
    for load in (load_checkpoint, load_model):
        with pytest.raises(CheckpointError) as error:
            load(newer)
        message = one_line(error)
        assert str(newer) in message and f"version {FORMAT_VERSION + 1}" in message
        assert f"reads version {FORMAT_VERSION}" in message


def foreign_ir(tmp_path, rt_info: dict | None) -> str:
    """A valid OpenVINO IR made by 'another tool': a detector-shaped graph, its own or no rt_info."""
    image = ops.parameter([1, 3, 128, 128], np.float32, name="image")
    pooled = ops.reduce_mean(image, np.array([2, 3], np.int64), keep_dims=False)
    score = ops.reduce_mean(pooled, np.array([1], np.int64), True)
    detections = ops.concat([pooled, pooled, score], 1)  # (1, 7)
    detections.output(0).set_names({"detections"})
    model = ov.Model([ops.result(detections)], [image], "other_tool")
    for key, value in (rt_info or {}).items():
        model.set_rt_info(value, ["model_info", key])
    path = tmp_path / "other.xml"
    ov.save_model(model, path)
    return path


@pytest.mark.parametrize("rt_info", [
    None,
    {"model_type": "ssd", "labels": "person car", "confidence_threshold": "0.5"},  # Open Model Zoo / OTX style
    {"format": "otx", "format_version": "1"},
], ids=["no-rt-info", "omz-style-model-info", "other-format"])
def test_ir_from_another_tool_is_refused_with_one_line_model_error(tmp_path, rt_info):
    path = foreign_ir(tmp_path, rt_info)
    assert ov.Core().read_model(path)  # a valid IR, just not ours
    with pytest.raises(ModelError) as error:
        Detector(path)
    text = one_line(error)
    assert "not a babo-edge IR" in text and str(path) in text

