"""ONNX / OpenVINO IR / NNCF INT8 export: parity with PyTorch, metadata, and the exact mask."""
import json
from dataclasses import replace

import nncf
import numpy as np
import onnx
import openvino as ov
import openvino.opset13 as ops
import pytest
import torch

from babo_edge import ir_metadata
from babo_edge.export import lean_graph, mask_graph, openvino_ir, parity, quantize
from babo_edge.export.onnx_export import anchors_path, export_onnx
from babo_edge.models.builders import ModelConfig, build_model
from babo_edge.runtime.detector import read_model_info
from babo_edge.models.profiling import network_convs, profile
from tiny import CLASS_NAMES, CONFIG

@pytest.fixture(scope="module")
def int8(tiny_ir, calib_images):
    return quantize.quantize_int8(tiny_ir.ov_model, calib_images, subset_size=len(calib_images))


def assert_meaningful(result: parity.Parity):
    """The comparison saw detections and a mask with both values."""
    assert result.matched > 0
    assert 0 < result.mask_intersection < result.mask_pixels


def test_onnx_graph_is_valid_with_named_io(tiny_ir):
    graph = onnx.load(str(tiny_ir.onnx_path))
    onnx.checker.check_model(graph)
    assert [i.name for i in graph.graph.input] == ["image"]
    assert [o.name for o in graph.graph.output] == ["detections", "mask"]
    assert {"ArgMax", "NonMaxSuppression"} <= {node.op_type for node in graph.graph.node}


def test_onnxruntime_matches_pytorch(tiny_model, tiny_ir, calib_images):
    result = parity.compare(parity.torch_runner(tiny_model), parity.onnxruntime_runner(tiny_ir.onnx_path), calib_images)
    assert_meaningful(result)
    assert result.violations(parity.FP32_TOLERANCE) == []


def test_openvino_fp32_matches_pytorch(tiny_model, tiny_ir, calib_images):
    compiled = openvino_ir.compile_fp32(tiny_ir.xml)
    result = parity.compare(parity.torch_runner(tiny_model), parity.openvino_runner(compiled), calib_images)
    assert_meaningful(result)
    assert result.violations(parity.FP32_TOLERANCE) == []
    assert result.mask_mismatches == 0  # the lean mask source (export.lean_graph) gives the argmax's mask


@pytest.mark.parametrize("in_size, out_size", [(8, 128), (16, 256), (5, 12), (12, 5), (7, 7), (3, 1)])
def test_bilinear_matrix_is_torch_bilinear_upsampling(in_size, out_size):
    """In float64, so that only the float32 rounding of the weights shows."""
    x = torch.randn(2, 1, in_size, in_size + 1, generator=torch.Generator().manual_seed(in_size), dtype=torch.float64)
    expected = torch.nn.functional.interpolate(x, size=(out_size, out_size + 3), mode="bilinear", align_corners=False)
    rows, cols = (torch.from_numpy(lean_graph.bilinear_matrix(*sizes)).double()
                  for sizes in ((in_size, out_size), (in_size + 1, out_size + 3)))
    torch.testing.assert_close(rows @ x @ cols.T, expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("in_hw, out_hw, rewritten", [
    ((64, 96), (32, 48), True), ((60, 90), (20, 30), True), ((64, 64), (16, 64), True),  # factors 2, 3, (4, 1)
    ((64, 64), (24, 24), False), ((32, 32), (64, 64), False), ((64, 64), (64, 64), False)])  # 8/3, up, identity
def test_integer_downscales_become_a_strided_depthwise_conv(in_hw, out_hw, rewritten):
    """Only where every output reads the same weights on its own block: then the conv gives the
    resize's values (float32 rounding of equal sums)."""
    image = ops.parameter([1, 3, *in_hw], np.float32)
    resize = ops.interpolate(image, ops.constant(np.array(out_hw, np.int64)), "linear_onnx", "sizes",
                             axes=ops.constant(np.array([2, 3], np.int64)), coordinate_transformation_mode="half_pixel")
    model = ov.Model([resize], [image])
    assert lean_graph.lean_downscales(model) == int(rewritten)
    kinds = {op.get_type_name() for op in model.get_ordered_ops()}
    assert ("GroupConvolution" in kinds) == rewritten and ("Interpolate" in kinds) != rewritten
    if not rewritten:
        return
    x = torch.randn(1, 3, *in_hw, generator=torch.Generator().manual_seed(0))
    expected = torch.nn.functional.interpolate(x, size=out_hw, mode="bilinear", align_corners=False)
    got = ov.Core().compile_model(model, "CPU", openvino_ir.FP32_HINT)(x.numpy())[0]
    torch.testing.assert_close(torch.from_numpy(got), expected, atol=2e-6, rtol=0)


def test_model_info_round_trips_through_the_xml(tiny_model, tiny_ir):
    entries = read_model_info(ov.Core().read_model(str(tiny_ir.xml)))
    info = ir_metadata.parse(entries)
    assert info == replace(tiny_ir.info, precision="fp32")
    # Every declared key is written, but the INT8 summary (an FP32 IR); no Model API key with another meaning.
    assert set(entries) == set(ir_metadata.KEYS) - {"quantization"}
    assert not {"mean_values", "scale_values", "embedded_processing", "reverse_input_channels"} & set(entries)
    assert entries["labels"] == "red_disc square triangle" and info.labels == ("red_disc", "square", "triangle")
    assert (entries["input_height"], entries["mask_input_width"]) == ("128", "64")
    assert info.input_hw == (128, 128) and info.mask_input_hw == (64, 64) and info.color_space == "RGB"
    assert (info.normalization_mean, info.normalization_std) == (CONFIG.mean, CONFIG.std)
    assert info.format_version == ir_metadata.FORMAT_VERSION and info.mask_aware
    assert ModelConfig.from_dict(json.loads(entries["model_config"])) == ModelConfig.from_dict(info.model_config) == CONFIG
    convs = info.convs
    run = profile(tiny_model, torch.zeros(1, 3, *CONFIG.input_size)).counts[0]
    assert [(c["name"], c["network"], c["block"]) for c in convs] == [
        (count.layer.name, count.layer.network, count.layer.block) for count in run]
    ir_convs = [op for op in tiny_ir.ov_model.get_ordered_ops() if op.get_type_name() in mask_graph.CONVOLUTIONS]
    added = [op for op in ir_convs if lean_graph.added_by_rewrite(op)]
    assert [op.get_type_name() for op in added] == ["GroupConvolution"]  # the OMG's input downscale
    assert {c["node"] for c in convs} == {op.get_friendly_name() for op in ir_convs if op not in added}


def test_mask_path_runs_from_the_argmax_to_every_detector_conv(tiny_model, tiny_ir):
    path = mask_graph.find_mask_path(tiny_ir.ov_model)
    # The lean form: the 1-channel logit margin upsampled by MatMuls, no 2-channel Interpolate + TopK.
    assert path.source.get_type_name() == "Greater"
    assert {"Subtract", "MatMul"} <= {node.get_type_name() for node in path.logits}
    assert not {"Interpolate", "TopK"} & {node.get_type_name() for node in path.logits}
    post = mask_graph.postprocessing_nodes(tiny_ir.ov_model)
    carriers = {node.get_type_name() for node in path.carriers}
    assert {"Convert", "MaxPool"} <= carriers <= {"Convert", "MaxPool"} | {node.get_type_name() for node in post}
    masked_convs = {target.get_node().get_friendly_name()
                    for multiply, _ in path.multiplies for target in multiply.output(0).get_target_inputs()
                    if target.get_node().get_type_name() in mask_graph.CONVOLUTIONS}
    assert all(target.get_node().get_type_name() in mask_graph.CONVOLUTIONS
               for multiply, _ in path.multiplies for target in multiply.output(0).get_target_inputs())
    assert len(masked_convs) == sum(net == "od" for net, *_ in network_convs(tiny_model))
    post = {node.get_type_name() for node in post}
    assert {"NonMaxSuppression", "If", "Softmax"} <= post and not post & set(mask_graph.CONVOLUTIONS)


def test_int8_keeps_the_mask_exact(tiny_ir, int8, calib_images):
    path = mask_graph.find_mask_path(tiny_ir.ov_model)
    assert {node.get_friendly_name() for node in path.nodes()} <= set(int8.ignored_scope.names)
    assert mask_graph.fake_quantizes_on_mask(int8.model) == []
    assert mask_graph.quantizers_not_keeping_zero(int8.model) == []
    # The scope does not cost the detector its INT8 convs, and the masking runs on 8-bit integers:
    # quantizer -> integer Multiply by the mask -> Convert -> constant scale -> conv.
    masked = mask_graph.find_mask_path(int8.model).multiplies
    assert len(masked) == len(mask_graph.find_mask_path(tiny_ir.ov_model).multiplies)
    for multiply, port in masked:
        assert multiply.get_output_element_type(0) in (ov.Type.u8, ov.Type.i8)
        assert multiply.input_value(1 - port).get_node().input_value(0).get_node().get_type_name() == "FakeQuantize"
        (convert,) = (target.get_node() for target in multiply.output(0).get_target_inputs())
        scales = [target.get_node() for target in convert.output(0).get_target_inputs()]
        assert [node.get_type_name() for node in scales] == ["Multiply"]
        assert all(target.get_node().get_type_name() in mask_graph.CONVOLUTIONS
                   for target in scales[0].output(0).get_target_inputs())
    fp32 = parity.openvino_runner(openvino_ir.compile_fp32(tiny_ir.xml))
    result = parity.compare(fp32, parity.openvino_runner(ov.Core().compile_model(int8.model, "CPU")), calib_images)
    assert result.mask_non_binary == 0
    assert result.mask_iou > 0.8


def test_integer_masking_is_nncfs_model_exactly(tiny_ir, int8, calib_images):
    """The rewrite (export.lean_graph.integer_mask_multiplies) against NNCF's own model, both run
    at f32: the convs read the same integers, so detections and mask are those of NNCF's model."""
    nncf_form = quantize.quantize_int8(tiny_ir.ov_model, calib_images, subset_size=len(calib_images),
                                       scope=quantize.ignored_scope(tiny_ir.ov_model)).model
    assert not [op for op in nncf_form.get_ordered_ops() if op.get_friendly_name().endswith("/mask")]
    result = parity.compare(parity.openvino_runner(openvino_ir.compile_fp32(nncf_form)),
                            parity.openvino_runner(openvino_ir.compile_fp32(int8.model)), calib_images)
    assert_meaningful(result)
    assert result.violations(parity.FP32_TOLERANCE) == []
    assert result.mask_mismatches == 0


def test_graph_check_catches_nncf_default_quantizing_the_mask(tiny_ir, calib_images):
    unprotected = quantize.quantize_int8(tiny_ir.ov_model, calib_images, subset_size=len(calib_images),
                                         scope=nncf.IgnoredScope())
    assert mask_graph.fake_quantizes_on_mask(unprotected.model)
    with pytest.raises(quantize.MaskQuantizedError, match="mask path"):
        quantize.check_mask_exact(unprotected.model)


def masking_graph(fq_on_mask: bool, conv_input_range: tuple[float, float]) -> ov.Model:
    """argmax -> Convert -> [FakeQuantize] -> Multiply -> FakeQuantize -> Convolution, by hand."""
    def fake_quantize(x, low, high):
        low, high = ops.constant(np.float32(low)), ops.constant(np.float32(high))
        return ops.fake_quantize(x, low, high, low, high, 256)
    logits = ops.parameter([1, 2, 8, 8], np.float32, name="logits")
    features = ops.parameter([1, 4, 8, 8], np.float32, name="features")
    mask = ops.convert(ops.topk(logits, ops.constant(np.int64(1)), 1, "max", "value").output(1), np.float32)
    multiplier = fake_quantize(mask, 0.0, 1.0) if fq_on_mask else mask
    masked = fake_quantize(ops.multiply(features, multiplier), *conv_input_range)
    conv = ops.convolution(masked, ops.constant(np.ones((4, 4, 1, 1), np.float32)), [1, 1], [0, 0], [0, 0], [1, 1])
    mask.output(0).set_names({"mask"})
    return ov.Model([ops.result(conv), ops.result(mask)], [logits, features])


def test_graph_checks_on_hand_built_graphs():
    assert mask_graph.fake_quantizes_on_mask(masking_graph(False, (-1.0, 127 / 128))) == []
    assert mask_graph.quantizers_not_keeping_zero(masking_graph(False, (-1.0, 127 / 128))) == []
    assert len(mask_graph.fake_quantizes_on_mask(masking_graph(True, (0.0, 1.0)))) == 1
    assert len(mask_graph.quantizers_not_keeping_zero(masking_graph(False, (0.1, 1.0)))) == 1
    assert len(mask_graph.quantizers_not_keeping_zero(masking_graph(False, (-1.0, 1.0)))) == 1


@pytest.mark.parametrize("conv_input_range", [(-1.0, 127 / 128), (0.0, 6.0)])
def test_integer_masking_on_a_hand_built_graph(conv_input_range):
    """Same conv output as FQ(features * mask); the checks accept it, and flag a zero point
    subtracted behind the integer Multiply."""
    reference, rewritten = masking_graph(False, conv_input_range), masking_graph(False, conv_input_range)
    assert lean_graph.integer_mask_multiplies(rewritten) == 1
    assert mask_graph.fake_quantizes_on_mask(rewritten) == [] and mask_graph.quantizers_not_keeping_zero(rewritten) == []
    rng = np.random.default_rng(0)
    inputs = [rng.normal(size=(1, 2, 8, 8)).astype(np.float32), rng.uniform(-2, 7, (1, 4, 8, 8)).astype(np.float32)]
    expected, actual = (openvino_ir.compile_fp32(graph)(inputs) for graph in (reference, rewritten))
    assert 0 < expected[1].mean() < 1
    np.testing.assert_allclose(actual[0], expected[0], rtol=1e-6, atol=1e-5)
    (multiply, _), = mask_graph.find_mask_path(rewritten).multiplies
    (convert,) = (target.get_node() for target in multiply.output(0).get_target_inputs())
    targets = list(convert.output(0).get_target_inputs())
    shifted = ops.subtract(convert, ops.constant(np.float32(1)))
    for target in targets:
        target.replace_source_output(shifted.output(0))
    assert mask_graph.quantizers_not_keeping_zero(rewritten) == [shifted.get_friendly_name()]


def test_raw_export_with_dynamic_batch(tmp_path, tiny_model, calib_images):
    path = export_onnx(tiny_model, CONFIG.input_size, tmp_path / "raw.onnx", dynamic_batch=True, raw=True)
    import onnxruntime as ort
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    batch = np.concatenate(calib_images[:3])
    cls, box, mask = session.run(["cls_logits", "box_deltas", "mask"], {"image": batch})
    with torch.no_grad():
        expected = tiny_model(torch.from_numpy(batch))
    np.testing.assert_allclose(cls, expected.cls_logits.numpy(), atol=1e-4)
    np.testing.assert_allclose(box, expected.box_deltas.numpy(), atol=1e-4)
    np.testing.assert_array_equal(mask, expected.mask.numpy())
    np.testing.assert_array_equal(np.load(anchors_path(path)), expected.anchors.numpy())
    # The IR, lean mask source included, gives the same heads and mask at any batch size.
    outputs = openvino_ir.compile_fp32(openvino_ir.convert(path))(batch)
    np.testing.assert_allclose(outputs["cls_logits"], expected.cls_logits.numpy(), atol=1e-4)
    np.testing.assert_allclose(outputs["box_deltas"], expected.box_deltas.numpy(), atol=1e-4)
    np.testing.assert_array_equal(outputs["mask"], expected.mask.numpy())


def test_vanilla_model_exports_without_mask(tmp_path, calib_images):
    config = ModelConfig(num_classes=3, input_size=(128, 128), width=0.5, omg=False)
    vanilla = build_model(config).eval()
    ov_model = openvino_ir.convert(export_onnx(vanilla, (128, 128), tmp_path / "vanilla.onnx"))
    assert [output.get_any_name() for output in ov_model.outputs] == ["detections"]
    scope = quantize.ignored_scope(ov_model)
    assert any("NonMaxSuppression" in node.get_type_name() for node in mask_graph.postprocessing_nodes(ov_model))
    vanilla_info = openvino_ir.model_info(vanilla, config, CLASS_NAMES, ov_model)
    assert scope.names and vanilla_info.mask_input_hw is None and not vanilla_info.mask_aware
    assert "mask_input_height" not in ir_metadata.to_entries(vanilla_info)
    # without a mask the ignored scope is the post-processing alone: every conv gets quantized
    assert set(scope.names) == {node.get_friendly_name() for node in mask_graph.postprocessing_nodes(ov_model)}
