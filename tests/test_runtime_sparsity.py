"""Device-side zero counters (runtime/sparsity.py) against the PyTorch reference (models/profiling.py)."""
import json
import math
import subprocess
import sys

import cv2
import numpy as np
import openvino as ov
import openvino.opset13 as ops
import pytest
import torch

from babo_edge.export import mask_graph, openvino_ir, parity, quantize
from babo_edge.models.profiling import mac_report, profile
from babo_edge.runtime import plots, sparsity


@pytest.fixture(scope="module")
def images(calib_images):
    """The calib images as one batch (4, 3, 128, 128)."""
    return np.concatenate(calib_images)


@pytest.fixture(scope="module")
def int8_model(ov_model, images):
    return quantize.quantize_int8(ov_model, list(images[:, None]), subset_size=len(images)).model


@pytest.fixture(scope="module")
def torch_profile(tiny_model, images):
    return profile(tiny_model, torch.from_numpy(images))


def run_each(compiled: ov.CompiledModel, images: np.ndarray) -> list[dict[str, np.ndarray]]:
    """One result per image: the IR has a static batch of 1."""
    return [sparsity.named(compiled(image[None])) for image in images]


def count_stream(model: ov.Model, images: np.ndarray, config: dict | None = None) -> sparsity.SparsityCounter:
    compiled = ov.Core().compile_model(sparsity.instrument(model), "CPU", config or {})
    counter = sparsity.SparsityCounter.from_model(model)
    for outputs in run_each(compiled, images):
        counter.add(outputs)
    return counter


def test_conv_layers_read_from_the_ir_equal_the_pytorch_layers(ov_model, torch_profile):
    assert sparsity.conv_layers(ov_model) == [count.layer for count in torch_profile.counts[0]]


# A ReLU6 input within float rounding of 0 (~1e-6 here) is 0 in one runtime and 1e-9 in the
# other: with the released 256 px model this flips single elements (6 of 133 x 8 layer-images,
# by 1 each); this tiny model counts exactly alike. Background zeros are exact (see below).
NEAR_ZERO_FLIPS = 1e-4  # of a layer's input activations, on top of 1 element per layer
COUNTED = ("zeros", "zero_ratio", "mac_star")
# MAC* with weight zeros: measured by PyTorch reports only (None in the runtime's, see README)
NOT_COUNTED_BY_THE_RUNTIME = ("mac_star_w",)


def flips_allowed(layers: int, activations: int) -> float:
    return layers + NEAR_ZERO_FLIPS * activations


def assert_counts_match(counts: list, reference: list) -> None:
    assert [c.layer for c in counts] == [c.layer for c in reference]
    for count, expected in zip(counts, reference):
        assert abs(count.zeros - expected.zeros) <= flips_allowed(1, count.layer.input_numel), count.layer.name


def without_counts(value):
    if isinstance(value, dict):
        return {key: without_counts(item) for key, item in value.items()
                if key not in COUNTED + NOT_COUNTED_BY_THE_RUNTIME}
    return [without_counts(item) for item in value] if isinstance(value, list) else value


def count_nodes(value) -> list[dict]:
    """Every row, block and total of a report: the dicts holding a zero count."""
    if isinstance(value, dict):
        return ([value] if "zeros" in value else []) + [node for item in value.values() for node in count_nodes(item)]
    return [node for item in value for node in count_nodes(item)] if isinstance(value, list) else []


def assert_reports_match(report: dict, reference: dict) -> None:
    """Schema, layers, blocks, shapes, MAC and FG-ratio equal; per row, block and total the zeros
    within the flips allowed per layer, zeros% and MAC* within what those flips change."""
    assert without_counts(report) == without_counts(reference)
    rows = reference["networks"]["od"]["layers"] + reference["networks"].get("omg", {}).get("layers", [])
    mac_per_activation = max(row["mac"] / math.prod(row["input_shape"]) for row in rows)
    for node, expected in zip(count_nodes(report), count_nodes(reference)):
        layers, activations = expected.get("layers", 1), expected.get("activations") or math.prod(expected["input_shape"])
        allowed = flips_allowed(layers, activations)
        assert abs(node["zeros"] - expected["zeros"]) <= allowed, expected.get("name")
        assert abs(node["zero_ratio"] - expected["zero_ratio"]) <= allowed / activations, expected.get("name")
        assert abs(node["mac_star"] - expected["mac_star"]) <= allowed * mac_per_activation, expected.get("name")


def test_fp32_counts_match_pytorch(ov_model, images, torch_profile):
    compiled = ov.Core().compile_model(sparsity.instrument(ov_model), "CPU", openvino_ir.FP32_HINT)
    layers = sparsity.conv_layers(ov_model)
    for i, outputs in enumerate(run_each(compiled, images)):
        (counts,) = sparsity.layer_counts(outputs, layers)
        assert_counts_match(counts, torch_profile.counts[i])
        assert sparsity.fg_ratios(outputs, 1) == [torch_profile.fg_ratios[i]]
    stem = next(c for c in torch_profile.counts[0] if c.layer.network == "od")
    assert 0 < stem.zeros < stem.layer.input_numel  # the comparison saw background and foreground


def test_runtime_report_matches_the_pytorch_report(tiny_model, ov_model, images):
    counter = count_stream(ov_model, images, openvino_ir.FP32_HINT)
    report = counter.report(meta={"source": "test"})
    assert_reports_match(report, mac_report(tiny_model, torch.from_numpy(images), meta={"source": "test"}))
    assert counter.images == len(images) and 0 < report["fg_ratio"] < 1
    assert "[od] blocks" in counter.table()


def test_instrumented_fp32_outputs_equal_the_plain_model_exactly(ov_model, images):
    counted = sparsity.instrument(ov_model)
    names = [output.get_any_name() for output in ov_model.outputs]
    assert [output.get_any_name() for output in counted.outputs][:len(names)] == names == ["detections", "mask"]
    assert len(counted.outputs) == len(names) + len(sparsity.conv_table(ov_model))
    plain = openvino_ir.compile_fp32(ov_model)
    instrumented = openvino_ir.compile_fp32(counted)
    for image in images:
        outputs, zeros = sparsity.split_outputs(instrumented(image[None]))
        expected = sparsity.named(plain(image[None]))
        assert outputs.keys() == expected.keys() and len(zeros) == len(sparsity.conv_table(ov_model))
        for name in expected:
            np.testing.assert_array_equal(outputs[name], expected[name])


def test_instrumented_int8_outputs_stay_within_int8_noise(int8_model, images):
    """Not bit-exact: an observed tensor cannot stay inside a fused chain, so the CPU plugin no
    longer fuses e.g. the OMG's residual Add + FakeQuantize into the conv before it (and under
    a bf16 hint keeps the ops feeding a counter in f32). Same math, other rounding; with the
    released 256 px model the difference is that of switching the precision hint bf16 -> f32
    (scores up to 0.06, mask IoU 0.995)."""
    core = ov.Core()
    plain = parity.openvino_runner(core.compile_model(int8_model, "CPU"))
    instrumented = core.compile_model(sparsity.instrument(int8_model), "CPU")
    result = parity.compare(plain, lambda batch: sparsity.split_outputs(instrumented(batch))[0], images)
    assert result.violations(parity.BINARY_MASK_ONLY) == []
    assert result.candidate_detections == result.reference_detections and result.mask_iou > 0.98


def with_background_counts(model: ov.Model) -> tuple[ov.Model, dict[str, str]]:
    """`model` plus, per masking Multiply, an output counting the zeros of the (pooled) mask it
    applies; and {conv node: that output} for the convs reading the product (in INT8 through
    the 8-bit product's Convert and constant scale of `export.lean_graph`, or a FakeQuantize)."""
    copy = model.clone()
    results, conv_output = [], {}
    for k, (multiply, port) in enumerate(mask_graph.find_mask_path(copy).multiplies):
        mask = multiply.input_value(port)
        zero = ops.constant(np.zeros((), mask.get_element_type().to_dtype()))
        is_zero = ops.convert(ops.equal(mask, zero), "i32")
        count = ops.reduce_sum(is_zero, ops.constant(np.array([1, 2, 3])), keep_dims=False)
        count.output(0).set_names({f"background/{k}"})
        results.append(ops.result(count))
        readers, pending = [], [multiply]
        while pending:
            for target in pending.pop().output(0).get_target_inputs():
                readers.append(target.get_node())
                if target.get_node().get_type_name() in ("FakeQuantize", "Convert", "Multiply"):
                    pending.append(target.get_node())
        conv_output.update({node.get_friendly_name(): f"background/{k}" for node in readers
                            if node.get_type_name() in mask_graph.CONVOLUTIONS})
    copy.add_results(results)
    return copy, conv_output


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_masked_convs_count_at_least_the_blacked_out_background(precision, ov_model, int8_model, images):
    """Provable, so exact: where the (max-pooled) mask is 0 the masked product is exactly 0, and in
    INT8 the 8-bit product scaled into the conv keeps 0 (checked by quantize_int8), so every masked
    conv input holds at least channels x the zero pixels of the mask it is multiplied with. The
    INT8 model's mask differs from the FP32 one (its OMG is quantized): each is compared with its
    own mask."""
    ov_model = ov_model if precision == "fp32" else int8_model
    model, background_of = with_background_counts(ov_model)
    layers = sparsity.conv_layers(ov_model)
    node_of = {entry["name"]: entry["node"] for entry in sparsity.conv_table(ov_model)}
    compiled = ov.Core().compile_model(sparsity.instrument(model), "CPU")
    masked = [layer for layer in layers if layer.network == "od"]
    assert {node_of[layer.name] for layer in masked} == set(background_of)
    for outputs in run_each(compiled, images):
        (counts,) = sparsity.layer_counts(outputs, layers)
        zeros = {c.layer.name: c.zeros for c in counts}
        for layer in masked:
            background = outputs[background_of[node_of[layer.name]]][0]
            assert zeros[layer.name] >= layer.in_channels * background, layer.name
        stem = masked[0]  # reads the full-resolution mask: its background is the mask output's
        assert stem.input_hw == outputs["mask"].shape[2:]
        assert zeros[stem.name] >= stem.input_numel * (1 - sparsity.fg_ratios(outputs, 1)[0]) > 0


def test_counts_a_hand_built_graph_with_dynamic_batch():
    """Known zeros, a grouped conv, a batch of 2 through a dynamic batch dimension."""
    data = ops.parameter([-1, 4, 6, 6], np.float32, name="x")
    conv = ops.convolution(data, ops.constant(np.ones((8, 4, 3, 3), np.float32)), [2, 2], [1, 1], [1, 1], [1, 1])
    group = ops.group_convolution(conv, ops.constant(np.ones((2, 4, 4, 1, 1), np.float32)), [1, 1], [0, 0], [0, 0], [1, 1])
    model = ov.Model([ops.result(group)], [data])
    table = [{"node": conv.get_friendly_name(), "name": "conv", "network": "od", "block": "od.a"},
             {"node": group.get_friendly_name(), "name": "group", "network": "od", "block": "od.b"}]
    openvino_ir.set_model_info(model, {"convs": json.dumps(table)})
    layers = sparsity.conv_layers(model)
    assert [(c.in_channels, c.out_channels, c.input_hw, c.kernel, c.stride, c.groups) for c in layers] == [
        (4, 8, (6, 6), (3, 3), (2, 2), 1), (8, 8, (3, 3), (1, 1), (1, 1), 2)]
    batch = np.ones((2, 4, 6, 6), np.float32)
    batch[0, :, :2] = 0  # 4 x 2 x 6 = 48 zeros; the 3x3/2 conv's first output row (of 3x3) reads only them
    batch[1] = 0
    compiled = ov.Core().compile_model(sparsity.instrument(model), "CPU")
    counts = sparsity.layer_counts(compiled(batch), layers)
    assert [[c.zeros for c in image] for image in counts] == [[48.0, 8 * 3.0], [144.0, 72.0]]
    assert sparsity.fg_ratios(compiled(batch), 2) == [None, None]


def test_clear_errors(ov_model):
    data = ops.parameter([1, 4, -1, -1], np.float32)
    conv = ops.convolution(data, ops.constant(np.ones((4, 4, 1, 1), np.float32)), [1, 1], [0, 0], [0, 0], [1, 1])
    model = ov.Model([ops.result(conv)], [data])
    with pytest.raises(ValueError, match="no model_info 'convs'"):
        sparsity.instrument(model)
    entry = {"node": conv.get_friendly_name(), "name": "conv", "network": "od", "block": "od.a"}
    openvino_ir.set_model_info(model, {"convs": json.dumps([entry])})
    with pytest.raises(ValueError, match="dynamic channels or H, W"):
        sparsity.conv_layers(model)
    openvino_ir.set_model_info(model, {"convs": json.dumps([{**entry, "node": "/renamed/Conv"}])})
    with pytest.raises(ValueError, match="another exporter version"):
        sparsity.instrument(model)
    with pytest.raises(ValueError, match="run a model made by instrument"):
        sparsity.layer_counts({"mask": np.zeros((1, 1, 2, 2))}, sparsity.conv_layers(ov_model))


def test_block_zeros_plot_with_two_reports(tmp_path, ov_model, int8_model, images):
    fp32 = count_stream(ov_model, images[:2], openvino_ir.FP32_HINT).report()
    int8 = count_stream(int8_model, images[:2]).report()
    figure = plots.block_zeros_figure(fp32, other=int8, labels=("FP32", "INT8"))
    axes = figure.axes[0]
    blocks = [b["name"] for b in fp32["networks"]["od"]["blocks"]]
    assert list(plots.block_zero_percent(fp32)) == blocks
    assert [t.get_text() for t in axes.get_xticklabels()] == [b.removeprefix("od.") for b in blocks]
    assert [c.get_label() for c in axes.containers] == ["FP32", "INT8"]
    for container, report in zip(axes.containers, (fp32, int8)):  # bar heights are the reports' zeros%
        assert [bar.get_height() for bar in container] == pytest.approx(list(plots.block_zero_percent(report).values()))
    path = plots.plot_block_zeros(fp32, tmp_path / "figures" / "zeros.png", other=int8, labels=("FP32", "INT8"))
    png = cv2.imread(str(path))
    assert png is not None and png.shape[1] == round(figure.get_figwidth() * 120)
    assert [p.name for p in path.parent.iterdir()] == ["zeros.png"]  # no temporary left behind


def test_counter_overhead_is_the_interleaved_median_ratio(ov_model, monkeypatch):
    """No wall clock: a fake plugin whose requests 'take' 2 ms plain and 3 ms with counters
    (told apart by the counters' extra outputs), under a fake clock."""
    clock = {"now": 0.0}
    calls = []
    plain_outputs = len(ov_model.outputs)

    class Request:
        def __init__(self, model):
            self.instrumented = len(model.outputs) > plain_outputs

        def infer(self, images):
            calls.append(self.instrumented)
            clock["now"] += 0.003 if self.instrumented else 0.002

    class Core:
        def compile_model(self, model, device, config):
            assert device == "CPU" and config == {"K": "V"}
            return type("Compiled", (), {"create_infer_request": lambda _self: Request(model)})()

    monkeypatch.setattr(sparsity.ov, "Core", Core)
    monkeypatch.setattr(sparsity.time, "perf_counter", lambda: clock["now"])
    result = sparsity.measure_overhead(ov_model, np.zeros((1, 3, 128, 128), np.float32), runs=5,
                                       config={"K": "V"})
    assert result["plain_ms"] == pytest.approx(2.0) and result["instrumented_ms"] == pytest.approx(3.0)
    assert result["overhead"] == pytest.approx(0.5) and result["runs"] == 5
    assert calls == [False, True] + [False, True] * 5  # one warm-up each, then interleaved


def test_torch_free_in_a_fresh_interpreter(xml, tmp_path):
    code = ("import sys, numpy as np, openvino as ov\n"
            "from babo_edge.runtime import plots, sparsity\n"
            f"model = ov.Core().read_model({str(xml)!r})\n"
            "compiled = ov.Core().compile_model(sparsity.instrument(model), 'CPU')\n"
            "counter = sparsity.SparsityCounter.from_model(model)\n"
            "counter.add(compiled(np.zeros((1, 3, 128, 128), np.float32)))\n"
            f"plots.plot_block_zeros(counter.report(), {str(tmp_path / 'zeros.png')!r})\n"
            "print(counter.images, sorted(m for m in ('torch', 'nncf', 'onnx', 'babo_edge.export') if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], cwd="/", capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "1 []"
