"""Per-layer activation sparsity of a deployed IR, counted on the device: the runtime MAC* report.

`instrument` adds, for every convolution of the IR's `convs` table (model_info, written by
export/openvino_ir.py), a reduction of the conv's data input to its number of exact zeros per
image, as an extra output `zeros/<layer name>`. The reduction reads exactly the tensor the conv
multiplies (in an INT8 IR, the FakeQuantize output), and only N integers per layer leave the
device. The counts feed `models.accounting`, so the report has the schema of models/report.py
and diffs line by line with the PyTorch report of the same model.

Counts are summed as int32: exact up to 2^31 - 1 zeros per image and layer. A float32 sum
would be exact only up to 2^24 (= VGG16-SSD512's 64x512x512 conv1_2 input, no margin), and
only at f32 precision: under the CPU plugin's bf16/f16 inference hints float sums round.

Counting is not free and not invisible. It reads every conv input once more (CPU, 2 cores:
+60% latency at f32, up to +100% under a bf16 hint, for MobileNetV2-SSDLite at 256 px), so
count on demand, not on every deployed frame. An observed tensor cannot stay inside a fused
chain: with the f32 hint an FP32 IR computes bit-identical outputs, but in an INT8 IR the plugin
no longer fuses e.g. a residual Add + FakeQuantize into the conv before it, and under a bf16
hint it keeps the ops feeding a counter in f32, so those outputs differ by rounding (about as
much as switching the precision hint) and the counts are those of that computation.

Torch-free on purpose (openvino, numpy and models.accounting only): it runs on the edge box.
"""
from __future__ import annotations

import statistics
import time
from collections.abc import Mapping

import numpy as np
import openvino as ov
import openvino.opset13 as ops

from babo_edge.models.accounting import ConvLayer, LayerCount, ReportAccumulator, format_report
from babo_edge import ir_metadata
from babo_edge.ir_metadata import MASK, SECTION

CONVS_KEY = "convs"  # declared in babo_edge.ir_metadata
ZEROS_PREFIX = "zeros/"
MASK_OUTPUT = MASK
CONVOLUTIONS = ("Convolution", "GroupConvolution", "BinaryConvolution")  # the last: models/binary.py
COUNT_TYPE = ov.Type.i32


def conv_table(model: ov.Model) -> list[dict]:
    """The IR's conv list ({"node", "name", "network", "block"}, in PyTorch execution order)."""
    table = ir_metadata.read_entry(model, CONVS_KEY)
    if table is None:
        raise ValueError(f"the IR has no {SECTION} {CONVS_KEY!r} table: re-export it with export/ to count sparsity")
    return table


def conv_nodes(model: ov.Model) -> list[tuple[dict, ov.Node]]:
    """(table entry, IR convolution) for every conv of the table, resolved by friendly name."""
    table = conv_table(model)
    by_name = {op.get_friendly_name(): op for op in model.get_ops() if op.get_type_name() in CONVOLUTIONS}
    missing = [entry["node"] for entry in table if entry["node"] not in by_name]
    if missing:
        raise ValueError(f"the IR has no convolution {missing[0]!r} ({len(missing)} missing): "
                         f"its convs table comes from another exporter version")
    return [(entry, by_name[entry["node"]]) for entry in table]


def conv_layers(model: ov.Model) -> list[ConvLayer]:
    """The report layers of the IR's convs, shapes read from the IR itself (batch may be dynamic,
    H and W may not: the MAC of a layer depends on them)."""
    return [_layer(entry, node) for entry, node in conv_nodes(model)]


def _layer(entry: dict, node: ov.Node) -> ConvLayer:
    data = node.input(0).get_partial_shape()
    if data.rank.get_length() != 4 or not all(data[i].is_static for i in (1, 2, 3)):
        raise ValueError(f"{entry['name']}: input shape {data} has dynamic channels or H, W; "
                         f"reshape the model to a static input size before counting")
    weights = list(node.input(1).get_partial_shape().to_shape())
    groups = weights.pop(0) if node.get_type_name() == "GroupConvolution" else 1
    return ConvLayer(
        name=entry["name"], network=entry["network"], block=entry["block"],
        in_channels=data[1].get_length(), out_channels=weights[0] * groups,
        input_hw=(data[2].get_length(), data[3].get_length()), kernel=tuple(weights[2:]),
        stride=tuple(node.get_attributes()["strides"]), groups=groups,
        binary=node.get_type_name() == "BinaryConvolution")


def instrument(model: ov.Model) -> ov.Model:
    """A copy of `model` with one extra output `zeros/<layer>` (shape (N,), int32) per conv:
    the zeros in the conv's data input per image (see `_is_zero`). The original outputs come first,
    unchanged."""
    counted = model.clone()
    results = []
    for entry, node in conv_nodes(counted):
        data = node.input_value(0)
        output_name = ZEROS_PREFIX + entry["name"]
        is_zero = ops.convert(_is_zero(data), COUNT_TYPE)
        count = ops.reduce_sum(is_zero, ops.constant(np.array([1, 2, 3], np.int64)), keep_dims=False,
                               name=output_name)
        count.output(0).set_names({output_name})
        results.append(ops.result(count, name=output_name))
    counted.add_results(results)
    return counted


def _is_zero(data: ov.Output) -> ov.Node:
    """Where the conv reads zero. Behind a FakeQuantize (INT8 IR) that is the zero level: the
    INT8 conv reads its integer zero point, while the float FakeQuantize output the counter can
    observe may be off zero by rounding (out_low + k * step), so values within half a step
    count. Elsewhere: exactly 0."""
    producer = data.get_node()
    dtype = data.get_element_type().to_dtype()
    if producer.get_type_name() == "FakeQuantize":
        limits = [producer.input_value(i).get_node() for i in (3, 4)]
        if all(limit.get_type_name() == "Constant" for limit in limits):
            low, high = (limit.get_data().astype(np.float64) for limit in limits)
            half_step = (high - low) / (producer.get_attributes()["levels"] - 1) / 2
            return ops.less(ops.abs(data), ops.constant(half_step.astype(dtype)))
    return ops.equal(data, ops.constant(np.zeros((), dtype)))


def named(outputs: Mapping) -> dict[str, np.ndarray]:
    """{output name: array} of a CompiledModel result (keys are ports) or of a plain dict."""
    return {key if isinstance(key, str) else key.get_any_name(): np.asarray(value)
            for key, value in outputs.items()}


def split_outputs(outputs: Mapping) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(the model's own outputs, {layer name: zeros per image}) of an instrumented model's result."""
    plain, zeros = {}, {}
    for name, value in named(outputs).items():
        if name.startswith(ZEROS_PREFIX):
            zeros[name[len(ZEROS_PREFIX):]] = value
        else:
            plain[name] = value
    return plain, zeros


def layer_counts(outputs: Mapping, layers: list[ConvLayer]) -> list[list[LayerCount]]:
    """Per image, the zeros of every layer (in `layers` order) from an instrumented result."""
    _, zeros = split_outputs(outputs)
    missing = [layer.name for layer in layers if layer.name not in zeros]
    if missing:
        raise ValueError(f"no zero count for layer {missing[0]!r}: run a model made by instrument()")
    images = len(zeros[layers[0].name]) if layers else 0
    return [[LayerCount(layer, float(zeros[layer.name][i])) for layer in layers] for i in range(images)]


def fg_ratios(outputs: Mapping, images: int) -> list[float | None]:
    """Per image, the mask's foreground fraction (None for a model without mask output)."""
    mask = named(outputs).get(MASK_OUTPUT)
    if mask is None:
        return [None] * images
    return [float(v) for v in mask.reshape(len(mask), -1).mean(axis=1, dtype=np.float64)]


class SparsityCounter:
    """Running MAC/MAC* report over a stream of instrumented results (models.accounting schema)."""

    def __init__(self, layers: list[ConvLayer]):
        self.layers = layers
        self._accumulator = ReportAccumulator()

    @classmethod
    def from_model(cls, model: ov.Model) -> SparsityCounter:
        return cls(conv_layers(model))

    def add(self, outputs: Mapping) -> list[list[LayerCount]]:
        """Adds every image of one result; returns its per-image counts."""
        counts = layer_counts(outputs, self.layers)
        for image_counts, fg in zip(counts, fg_ratios(outputs, len(counts))):
            self._accumulator.add(image_counts, fg)
        return counts

    @property
    def images(self) -> int:
        return self._accumulator.images

    def report(self, meta: dict | None = None) -> dict:
        return self._accumulator.report(meta)

    def table(self, per_layer: bool = True) -> str:
        return format_report(self.report(), per_layer=per_layer)


def measure_overhead(model: ov.Model, images: np.ndarray, runs: int = 20, device: str = "CPU",
                     config: dict | None = None) -> dict[str, float]:
    """Median latency (ms) of `model` and of `instrument(model)` on the same input, compiled
    alike: what the counters cost, for reports (not a benchmark: one stream, no pinning)."""
    core = ov.Core()
    requests = [core.compile_model(candidate, device, config or {}).create_infer_request()
                for candidate in (model, instrument(model))]
    times: list[list[float]] = [[], []]
    for request in requests:
        request.infer(images)  # warm-up: first-run allocations
    for _ in range(runs):  # interleaved, so load from elsewhere hits both alike
        for request, spent in zip(requests, times):
            start = time.perf_counter()
            request.infer(images)
            spent.append(time.perf_counter() - start)
    plain_ms, counted_ms = (1000 * statistics.median(spent) for spent in times)
    return {"plain_ms": plain_ms, "instrumented_ms": counted_ms,
            "overhead": counted_ms / plain_ms - 1, "runs": runs}
