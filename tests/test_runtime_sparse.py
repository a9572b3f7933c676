"""Sparse-scene execution (runtime.sparse): OMG first, empty masks skip the detector, ROI crops give
the dense graph's detections, auto picks per frame."""
import copy
import dataclasses
import math

import cv2
import numpy as np
import openvino as ov
import pytest
import torch

from babo_edge.export import parity, quantize
from babo_edge.models.builders import ModelConfig, build_model
from babo_edge.runtime.detector import Detector, ModelError, preprocess
from babo_edge.runtime.sparse import (EXPLORE_EVERY, IMAGE_CROP, MASK_CROP, OFFSET_INPUT, ROI_STRIDE, AdaptiveCost,
                                      CostModel, SparsePlan, crop_of)
from test_runtime_detector import with_info
from tiny import CONFIG, FP32, export_ir

# Not a multiple of 32: the last row and column of cells are partial.
ODD_CONFIG = ModelConfig(num_classes=3, input_size=(144, 208), omg_size=(72, 104), width=0.5)


def compare(expected: np.ndarray, actual: np.ndarray) -> parity.Parity:
    return parity.compare(lambda _: {"detections": expected}, lambda _: {"detections": actual},
                          [np.zeros((1, 3, 1, 1), np.float32)])


def assert_same(expected: np.ndarray, actual: np.ndarray, tolerance=parity.FP32_TOLERANCE):
    compared = compare(expected, actual)
    assert compared.violations(tolerance) == [] and compared.matched == len(expected)


def omg_biased(model, foreground: bool):
    """`model` with an OMG that keeps every pixel (or none)."""
    model = copy.deepcopy(model)
    with torch.no_grad():
        model.omg.classifier[-1].bias[:] = torch.tensor([0.0, 1e4 if foreground else -1e4])
    return model


def masks(input_hw) -> dict[str, np.ndarray]:
    """Masks (1, 1, H, W) of the shapes that matter for cropping."""
    h, w = input_hw
    out = {name: np.zeros((1, 1, h, w), np.float32) for name in
           ("border", "corner", "components", "pixel", "far_corner", "full_rows")}
    out["border"][..., h // 3:h // 2, :20] = 1  # touches the left border
    out["corner"][..., h - 9:, w - 13:] = 1  # bottom-right corner (a partial cell on odd sizes)
    cv2.circle(out["components"][0, 0], (w // 3, h // 3), 6, 1, -1)  # several components
    cv2.circle(out["components"][0, 0], (2 * w // 3, 2 * h // 3), 6, 1, -1)
    out["components"][..., h // 2, w // 2] = 1
    out["pixel"][..., 40, 70] = 1
    out["far_corner"][..., 0, 0] = out["far_corner"][..., h - 1, w - 1] = 1  # the box is everything
    out["full_rows"][..., 33:70, :] = 1
    out["full"] = np.ones((1, 1, h, w), np.float32)
    return out


def run_roi(compiled: dict, plan: SparsePlan, image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Detections of the ROI path for `mask` (the dense detector when the crop is everything)."""
    y0, x0, h, w = crop_of(mask.max(axis=(0, 1, 3)), mask.max(axis=(0, 1, 2)), plan.input_hw)
    if (h, w) == plan.input_hw:
        return compiled["dense"]({"image": image, "mask": mask})["detections"]
    if (h, w) not in compiled:
        compiled[h, w] = ov.Core().compile_model(plan.roi((h, w)), "CPU", FP32)
    offset = np.array([y0 // ROI_STRIDE, x0 // ROI_STRIDE], np.int64)
    feed = {IMAGE_CROP: image[..., y0:y0 + h, x0:x0 + w], MASK_CROP: mask[..., y0:y0 + h, x0:x0 + w],
            OFFSET_INPUT: offset}
    assert {name for port in compiled[h, w].inputs for name in port.get_names()} == set(feed)  # no full-size mask
    return compiled[h, w](feed)["detections"]


def check_roi_is_dense(ov_model: ov.Model, input_hw, images, config=FP32, tolerance=parity.FP32_TOLERANCE):
    plan = SparsePlan(ov_model, input_hw)
    compiled = {"dense": ov.Core().compile_model(plan.detector, "CPU", config)}
    crops = set()
    for name, mask in masks(input_hw).items():
        for image in images:
            expected = compiled["dense"]({"image": image, "mask": mask})["detections"]
            assert_same(expected, run_roi(compiled, plan, image, mask), tolerance)
            assert len(expected) > 0, name
        crops.add(crop_of(mask.max(axis=(0, 1, 3)), mask.max(axis=(0, 1, 2)), input_hw))
    return crops


@pytest.fixture(scope="module")
def images(calib_images):
    """preprocess() of the first two calib frames."""
    return calib_images[:2]


def test_crop_snaps_to_the_stride_32_grid_and_the_input_edge():
    rows, cols = np.zeros(144), np.zeros(208)
    assert crop_of(rows, cols, (144, 208)) is None
    rows[[40, 130]] = cols[[33, 63]] = 1
    assert crop_of(rows, cols, (144, 208)) == (32, 32, 112, 32)  # rows 32..144 (partial last cell)
    rows[:] = cols[:] = 0
    rows[140], cols[200] = 1, 1
    assert crop_of(rows, cols, (144, 208)) == (96, 160, 48, 48)  # a 16 px partial cell and one more
    rows[:] = cols[:] = 1
    assert crop_of(rows, cols, (144, 208)) == (0, 0, 144, 208)


def test_only_pools_with_aligned_windows_and_channel_reductions_run_on_a_crop():
    """A crop aligned on the stride-32 grid holds whole windows of non-overlapping pools (VGG's
    2x2/2), not of overlapping ones (VGG's pool5, 3x3/1 padded, reads across the crop's edge);
    a reduction over the channels alone (VGG's L2Norm) reads one location."""
    x = ov.opset13.parameter([1, 8, 32, 32], ov.Type.f32)
    aligned = ov.opset13.max_pool(x, [2, 2], [1, 1], [0, 0], [0, 0], [2, 2], "ceil")
    overlapping = ov.opset13.max_pool(x, [1, 1], [1, 1], [1, 1], [1, 1], [3, 3], "floor")
    average = ov.opset13.avg_pool(x, [2, 2], [0, 0], [0, 0], [2, 2], True, "floor")

    def reduce(axes, keep=True):
        return ov.opset13.reduce_sum(x, ov.opset13.constant(np.array(axes, np.int64)), keep)

    assert SparsePlan._is_local(aligned) and SparsePlan._is_local(average)
    assert not SparsePlan._is_local(overlapping)
    assert SparsePlan._is_local(reduce([1])) and SparsePlan._is_local(reduce([-3]))
    assert not SparsePlan._is_local(reduce([2, 3])) and not SparsePlan._is_local(reduce([1], keep=False))
    assert SparsePlan._is_local(ov.opset13.relu(x)) and not SparsePlan._is_local(ov.opset13.softmax(x, 1))


def test_roi_gives_the_dense_detections_for_every_mask_shape(xml, images):
    crops = check_roi_is_dense(ov.Core().read_model(str(xml)), CONFIG.input_size, images)
    assert crops == {(32, 0, 32, 32), (96, 96, 32, 32), (32, 32, 64, 64), (32, 64, 32, 32), (0, 0, 128, 128),
                     (32, 0, 64, 128)}


def test_roi_on_an_input_size_that_is_not_a_multiple_of_32(tmp_path, calib_frames):
    torch.manual_seed(1)
    model = build_model(ODD_CONFIG).eval()
    ir = export_ir(model, tmp_path, ODD_CONFIG)
    images = [preprocess(frame, ODD_CONFIG.input_size) for frame in calib_frames[:2]]
    crops = check_roi_is_dense(ov.Core().read_model(str(ir)), ODD_CONFIG.input_size, images)
    assert {(96, 160, 48, 48), (32, 32, 96, 128)} <= crops  # a partial corner cell (with one more); two components


def test_int8_roi_gives_the_int8_dense_detections(xml, images, calib_images):
    """With f32 execution (no bf16 shortcuts: the plugin may fuse the crop model differently)."""
    int8 = quantize.quantize_int8(ov.Core().read_model(str(xml)), calib_images, subset_size=len(calib_images)).model
    check_roi_is_dense(int8, CONFIG.input_size, images)


@pytest.mark.parametrize("execution", ["roi", "auto"])
def test_detector_sparse_execution_matches_dense_on_frames(xml, calib_frames, execution):
    dense = Detector(xml, config=FP32)
    sparse = Detector(xml, config=FP32, execution=execution)
    assert sparse.execution == execution
    for frame in [calib_frames[0], cv2.resize(calib_frames[1], (301, 203)), calib_frames[2][:, :, 0]]:
        expected, result = dense(frame), sparse(frame)
        assert result.execution in ("roi", "dense") and np.array_equal(result.mask, expected.mask)
        assert result.labels.tolist() == expected.labels.tolist()
        np.testing.assert_allclose(result.scores, expected.scores, atol=1e-4)
        np.testing.assert_allclose(result.boxes, expected.boxes, atol=0.01)


def test_empty_mask_needs_only_the_omg(tiny_model, tmp_path, calib_frames):
    xml = export_ir(omg_biased(tiny_model, foreground=False), tmp_path)
    dense, roi = Detector(xml, config=FP32), Detector(xml, config=FP32, execution="roi")
    for frame in calib_frames[:2]:
        expected, result = dense(frame), roi(frame)
        assert len(expected.boxes) == len(result.boxes) == 0 and result.execution == "empty"
        assert result.mask.max() == 0 and result.roi is None


def test_full_mask_runs_the_dense_detector(tiny_model, tmp_path, calib_frames):
    xml = export_ir(omg_biased(tiny_model, foreground=True), tmp_path)
    dense, roi = Detector(xml, config=FP32), Detector(xml, config=FP32, execution="roi")
    expected, result = dense(calib_frames[0]), roi(calib_frames[0])
    assert result.execution == "dense" and result.mask.min() == 1 and len(expected.boxes) > 0
    assert_same(np.column_stack([np.zeros(len(expected.boxes)), expected.labels, expected.scores, expected.boxes]),
                np.column_stack([np.zeros(len(result.boxes)), result.labels, result.scores, result.boxes]))


def test_async_sparse_results_come_in_order(xml, calib_frames):
    roi = Detector(xml, config=FP32, execution="roi")
    for i, frame in enumerate(calib_frames):
        roi.infer_async(frame, i)
    roi.wait_all()
    delivered = list(roi.results())
    assert [i for i, _ in delivered] == list(range(len(calib_frames)))
    for (i, result), frame in zip(delivered, calib_frames):
        np.testing.assert_array_equal(result.boxes, roi(frame).boxes)


def test_roi_is_reported_in_frame_pixels(xml, calib_frames):
    frame = cv2.resize(calib_frames[0], (256, 64))  # 2x wider, half as high as the 128 px input
    result = Detector(xml, config=FP32, execution="roi")(frame)
    if result.execution == "roi":
        x1, y1, x2, y2 = result.roi
        assert x1 % 64 == 0 and y1 % 16 == 0 and x2 <= 256 and y2 <= 64 and (x2 - x1) * (y2 - y1) < 256 * 64


PRIOR = CostModel(omg=0.3, detector=1.0, dense=1.1, fixed=0.1, per_area=1.1)


def test_cost_model_picks_the_cheaper_path():
    cost = AdaptiveCost(PRIOR)
    assert cost.prefers_roi(0.5) and not cost.prefers_roi(0.9)  # 0.3 + 0.1 + 1.1 * area vs 0.3 + 1.0
    assert cost.omg_first(None) and cost.omg_first(0.3) and not cost.omg_first(0.8)  # vs the dense graph's 1.1


def test_cost_model_follows_the_observed_times_and_explores_the_path_not_taken():
    cost = AdaptiveCost(PRIOR)
    assert cost.omg_first(0.3)  # predicted 0.3 + 0.1 + 0.33 = 0.73 < 1.1
    for _ in range(10):  # the crops take twice their prediction (1.46 s), the dense graph is as measured
        cost.observe("roi", 0.3, 2 * PRIOR.frame("roi", 0.3))
    # the mean of the prior (1) and the first 4 frames (2), then a running average of weight 0.2
    assert cost.scale["roi"] == pytest.approx(2 - 0.2 * 0.8 ** 6) and not cost.omg_first(0.3)
    assert cost.predicted("roi", 0.3) == pytest.approx(cost.scale["roi"] * 0.73)
    ran = []
    for _ in range(2 * EXPLORE_EVERY):
        path = "dense" if not cost.omg_first(0.3) else "roi" if cost.prefers_roi(0.3) else "omg_dense"
        ran.append(path)
        cost.observe(path, 0.3, {"dense": 1.1, "roi": 1.46, "omg_dense": 1.3}[path])
    # the dense graph, and after EXPLORE_EVERY frames x the cost ratio of the best OMG-first path
    # (0.3 + 1.0 vs 1.1), an OMG-first frame to look again
    assert [i for i, path in enumerate(ran) if path != "dense"] == [math.ceil(EXPLORE_EVERY * 1.3 / 1.1)]
    cost.idle["roi"] = 10 * EXPLORE_EVERY
    assert cost.prefers_roi(0.9) and not cost.prefers_roi(0.9, compiled=False)  # no compiling to explore
    before = cost.scale["roi"]
    cost.observe("roi", 0.3, 1e-9)  # a nonsense time counts as a quarter of the prediction
    assert cost.scale["roi"] == pytest.approx(before + 0.2 * (0.25 - before))


def test_auto_runs_the_dense_graph_after_a_large_crop_and_stays_exact(xml, calib_frames):
    dense, auto = Detector(xml, config=FP32), Detector(xml, config=FP32, execution="auto")
    auto._sparse.cost = AdaptiveCost(PRIOR)
    auto._sparse._previous_area = 1.0  # as after a full-frame crop: one call of the dense graph
    sequence = [calib_frames[0], np.zeros_like(calib_frames[1]), calib_frames[1], calib_frames[2]]
    ran = []
    for frame in sequence:
        expected, result = dense(frame), auto(frame)
        ran.append((result.execution, auto._sparse._previous_area))
        assert result.labels.tolist() == expected.labels.tolist() and np.array_equal(result.mask, expected.mask)
        np.testing.assert_allclose(result.boxes, expected.boxes, atol=0.01)
    assert ran[0][0] == "dense"  # predicted from the previous frame's crop, whatever this one's


def test_sparse_execution_needs_a_mask_aware_babo_ir(xml, tmp_path):
    with pytest.raises(ValueError, match="unknown execution 'sparse'; use one of dense, roi, auto"):
        Detector(xml, execution="sparse")
    old = with_info(ov.Core().read_model(str(xml)), blacked_out_anchors=None)
    with pytest.raises(ModelError, match="needs mask-aware post-processing .* re-export"):
        Detector.from_model(old, execution="roi")
    torch.manual_seed(0)
    vanilla_xml = export_ir(build_model(dataclasses.replace(CONFIG, omg=False)).eval(), tmp_path)
    with pytest.raises(ModelError, match="roi execution needs a BABO IR"):
        Detector(vanilla_xml, execution="roi")
    assert Detector(vanilla_xml, execution="auto").execution == "dense"
