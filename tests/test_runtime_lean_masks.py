"""runtime.lean_masks: the dense graph compiled without the mask Multiplies in front of pointwise
convs gives the IR's detections for every mask shape: bit for bit in FP32 (f32 execution), within
the parity tolerance in INT8 (the plugin fuses the quantizers differently)."""
import numpy as np
import openvino as ov
import openvino.opset13 as ops
import pytest

from babo_edge.export import quantize
from babo_edge.runtime.detector import Detector
from babo_edge.runtime.lean_masks import drop_pointwise_masks
from babo_edge.runtime.sparse import IMAGE_CROP, MASK_CROP, OFFSET_INPUT, ROI_STRIDE, SparsePlan, crop_of
from babo_edge.runtime.sparsity import instrument
from babo_edge.export import parity
from test_runtime_sparse import compare, masks
from tiny import CONFIG, FP32


def multiplies(model: ov.Model) -> int:
    return sum(op.get_type_name() == "Multiply" for op in model.get_ops())


def test_only_products_that_reach_pointwise_stride_1_convs_alone_are_dropped():
    x = ops.parameter([1, 4, 8, 8], ov.Type.f32, name="x")
    mask = ops.parameter([1, 1, 8, 8], ov.Type.f32, name="mask")
    mask.output(0).set_names({"mask"})

    def conv(value, kernel, stride=1):
        weights = ops.constant(np.ones((4, 4, kernel, kernel), np.float32))
        pad = kernel // 2
        return ops.convolution(value, weights, [stride] * 2, [pad] * 2, [pad] * 2, [1, 1])

    scale = ops.constant(np.full((1, 4, 1, 1), 0.5, np.float32))
    pointwise = conv(ops.multiply(ops.multiply(x, mask), scale), 1)        # through a constant scaling: dropped
    spatial = conv(ops.multiply(x, mask), 3)                                # a 3x3 conv reads neighbours: kept
    strided = conv(ops.multiply(x, mask), 1, stride=2)                     # stride 2: kept
    counted = ops.multiply(x, mask)                                         # also an output: kept
    also_read = conv(counted, 1)
    data_times_data = conv(ops.multiply(ops.multiply(x, x), mask), 1)      # x * x is not the mask: one dropped
    model = ov.Model([pointwise, spatial, strided, also_read, counted, data_times_data], [x, mask])
    before = multiplies(model)
    assert drop_pointwise_masks(model) == 2
    assert multiplies(model) == before - 2
    assert pointwise.input_value(0).get_node().get_type_name() == "Multiply"  # the constant scaling stays
    assert pointwise.input_value(0).get_node().input_value(0).get_node().get_friendly_name() == "x"


@pytest.fixture(scope="module")
def int8_model(xml, calib_images):
    return quantize.quantize_int8(ov.Core().read_model(str(xml)), calib_images, subset_size=len(calib_images)).model


# FP32 under the plugin's bf16 default is left out: bf16 rounds where the plugin fuses, which a
# dropped node changes, as any graph rewrite would.
@pytest.mark.parametrize("precision, config", [("fp32", FP32), ("int8", FP32), ("int8", {})],
                         ids=["fp32-f32", "int8-f32", "int8-plugin-default"])
def test_the_lean_detector_gives_the_same_detections_for_every_mask_shape(xml, int8_model, calib_images,
                                                                          precision, config):
    model = ov.Core().read_model(str(xml)) if precision == "fp32" else int8_model
    detector = SparsePlan(model, CONFIG.input_size).detector  # the dense detector with the mask as an input
    lean = detector.clone()
    dropped = drop_pointwise_masks(lean)
    assert 0 < dropped < multiplies(detector)
    core = ov.Core()
    reference, fast = (core.compile_model(m, "CPU", config) for m in (detector, lean))
    for name, mask in {**masks(CONFIG.input_size), "empty": np.zeros((1, 1, *CONFIG.input_size), np.float32)}.items():
        for image in calib_images[:2]:
            expected = reference({"image": image, "mask": mask})["detections"]
            got = fast({"image": image, "mask": mask})["detections"]
            if precision == "fp32":
                assert np.array_equal(got, expected), name
            else:  # the plugin fuses the quantizers differently: rounding, within the parity tolerance
                compared = compare(expected, got)
                assert compared.violations(parity.FP32_TOLERANCE) == [], name
                # At the cap, candidates a rounding apart are cut in either order.
                assert compared.matched == len(expected) or len(expected) == CONFIG.postprocess.max_detections, name
            assert (len(expected) == 0) == (name == "empty")


def test_detector_compiles_the_lean_graph_and_keeps_the_ir_whole(xml, calib_frames):
    lean, whole = Detector(xml, config=FP32), Detector(xml, config=FP32, lean_masks=False)
    assert multiplies(lean.model) == multiplies(whole.model) == multiplies(ov.Core().read_model(str(xml)))
    assert len(lean.compiled.get_runtime_model().get_ops()) < len(whole.compiled.get_runtime_model().get_ops())
    for frame in calib_frames[:3]:
        expected, result = whole(frame), lean(frame)
        assert np.array_equal(result.mask, expected.mask) and result.labels.tolist() == expected.labels.tolist()
        assert np.array_equal(result.scores, expected.scores) and np.array_equal(result.boxes, expected.boxes)


def test_an_instrumented_model_keeps_every_mask_multiply_where_it_is_counted(ov_model):
    assert drop_pointwise_masks(ov_model.clone()) > 0
    assert drop_pointwise_masks(instrument(ov_model)) == 0


def test_lean_crop_models_give_the_crop_models_detections(xml, calib_images):
    plan = SparsePlan(ov.Core().read_model(str(xml)), CONFIG.input_size)
    core = ov.Core()
    crops = {}
    for name, mask in masks(CONFIG.input_size).items():
        y0, x0, h, w = crop_of(mask.max(axis=(0, 1, 3)), mask.max(axis=(0, 1, 2)), CONFIG.input_size)
        if (h, w) == CONFIG.input_size:
            continue
        if (h, w) not in crops:
            lean = plan.roi((h, w))
            assert drop_pointwise_masks(lean, (MASK_CROP,)) > 0  # the crop's masks (a crop model has no other)
            crops[h, w] = [core.compile_model(m, "CPU", FP32) for m in (plan.roi((h, w)), lean)]
        for image in calib_images[:2]:
            feed = {IMAGE_CROP: image[..., y0:y0 + h, x0:x0 + w], MASK_CROP: mask[..., y0:y0 + h, x0:x0 + w],
                    OFFSET_INPUT: np.array([y0 // ROI_STRIDE, x0 // ROI_STRIDE], np.int64)}
            reference, fast = (compiled(feed)["detections"] for compiled in crops[h, w])
            assert np.array_equal(fast, reference) and len(reference), name
    assert len(crops) >= 3


def test_the_sparse_runner_compiles_lean_parts_unless_told_not_to(xml):
    lean = Detector(xml, config=FP32, execution="auto")._sparse
    whole = Detector(xml, config=FP32, execution="auto", lean_masks=False)._sparse
    assert lean.lean_masks and not whole.lean_masks
    ops = [len(r.get_compiled_model().get_runtime_model().get_ops()) for r in (lean._detector, whole._detector)]
    assert ops[0] < ops[1]
