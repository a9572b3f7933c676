"""Where the objectness mask and the post-processing live in an OpenVINO graph, found by structure.

After conversion the OMG's last conv (`Convolution` + bias `Add`) is upsampled (`Interpolate`)
and its ArgMax is a `TopK` (mode max, k=1) whose index output, `Convert`ed to float, is the
`mask` output, the input of the max-pool pyramid (`MaxPool` x7 at 128 px) and the second
operand of one `Multiply` per distinct conv input. `export.lean_graph` turns the argmax into a
`Greater` on the upsampled logit margin, which is then the source, and the INT8 masking into
8-bit integers times the mask. The mask may also reach the post-processing (scores of
blacked-out anchors): a `Multiply` there ends the path as well. The walks below follow edges
only, never names, so they hold for any graph the exporter produces, and they see the
FakeQuantize nodes NNCF inserts, which is what the INT8 checks need.
"""
from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import openvino as ov

from babo_edge.ir_metadata import DETECTIONS, MASK, RAW_OUTPUTS

CONVOLUTIONS = ("Convolution", "GroupConvolution")
MASK_SOURCES = ("TopK", "ArgMax", "Greater")
# Edges that carry shapes, not values: nothing behind them changes a value in front of them.
SHAPE_ONLY = ("ShapeOf",)


@dataclass
class MaskPath:
    logits: list[ov.Node]  # from the OMG's last convs to the argmax (bias Add, Interpolate)
    source: ov.Node  # the argmax (TopK, or Greater on the logit margin) of the OMG logits
    carriers: list[ov.Node]  # everything between the source and the Multiplies (Convert, MaxPool, ...)
    multiplies: list[tuple[ov.Node, int]]  # (Multiply applying the mask to a conv input, its mask port)
    scoring: list[ov.Node]  # Multiplies applying it in the post-processing (scores), no conv behind

    def nodes(self) -> list[ov.Node]:
        return [*self.logits, self.source, *self.carriers, *(node for node, _ in self.multiplies), *self.scoring]


def _results_named(model: ov.Model, name: str) -> list[ov.Node]:
    return [result for result in model.get_results()
            if name in result.input_value(0).get_names() or name in result.output(0).get_names()]


def output_node(model: ov.Model, name: str) -> ov.Node:
    """The Result node of the output called `name`."""
    results = _results_named(model, name)
    if results:
        return results[0]
    raise ValueError(f"the model has no output {name!r}; outputs: {[o.get_any_name() for o in model.outputs]}")


def has_output(model: ov.Model, name: str) -> bool:
    return bool(_results_named(model, name))


def find_mask_path(model: ov.Model, mask_output: str = MASK) -> MaskPath:
    """The mask's source (up from the `mask` output to the TopK/ArgMax producing it), the ops
    between the OMG's convs and it, and everything downstream of it up to and including the
    Multiplies that apply it."""
    producer = output_node(model, mask_output).input_value(0)
    while producer.get_node().get_type_name() not in MASK_SOURCES:
        node = producer.get_node()
        if node.get_input_size() == 0:
            raise ValueError(f"output {mask_output!r} does not come from an argmax (reached {node.get_type_name()})")
        producer = node.input_value(0)
    source = producer.get_node()
    carriers, multiplies, scoring = [], [], []
    on_path = {_key(source)}
    pending = deque(_consumers(producer))
    while pending:
        node, port = pending.popleft()
        if _key(node) in on_path or node.get_type_name() in ("Result", *SHAPE_ONLY):
            continue
        on_path.add(_key(node))
        if node.get_type_name() == "Multiply":
            if _conv_input_chain(node)[1]:
                multiplies.append((node, port))
            else:
                scoring.append(node)
            continue
        if _is_convolution(node):
            raise ValueError(f"the mask reaches {node.get_friendly_name()} without a Multiply")
        carriers.append(node)
        pending.extend(consumer for output in node.outputs() for consumer in _consumers(output))
    logits = _upstream([source.input_value(0)], stop=_is_convolution)
    return MaskPath(logits, source, carriers, multiplies, scoring)


def postprocessing_nodes(model: ov.Model) -> list[ov.Node]:
    """Every op the detections are computed from after the last convolutions: head reshapes,
    scores, top-k, decoding, NMS and the gathers after it; in a raw-output IR, the head
    reshapes and concatenations in front of `cls_logits` and `box_deltas`."""
    names = [DETECTIONS] if has_output(model, DETECTIONS) else list(RAW_OUTPUTS)
    return _upstream([output_node(model, name).input_value(0) for name in names], stop=_is_convolution)


def sign_input_nodes(model: ov.Model) -> list[ov.Node]:
    """Ops whose values a binary conv's sign (a 2-level FakeQuantize) reads, back to the previous
    convolutions: they must stay float, since an 8-bit quantizer maps every value in (0, step/2)
    to 0, whose sign is -1, and a deep binary network amplifies each such flip."""
    signs = [op for op in model.get_ops() if _is_sign(op)]
    return _upstream([sign.input_value(0) for sign in signs], stop=_is_any_convolution)


def sign_inputs(model: ov.Model) -> list[ov.Output]:
    """What each binary conv's sign reads, before its -1 padding (the binary conv's input in
    PyTorch), in topological order."""
    values = [op.input_value(0) for op in model.get_ordered_ops() if _is_sign(op)]
    return [value.get_node().input_value(0) if value.get_node().get_type_name() == "Pad" else value
            for value in values]


def quantizers_before_signs(model: ov.Model) -> list[str]:
    """Multi-level FakeQuantize nodes among `sign_input_nodes`; empty when every binary conv
    reads the float values the FP32 model has."""
    return sorted(node.get_friendly_name() for node in sign_input_nodes(model)
                  if node.get_type_name() == "FakeQuantize" and not _is_sign(node))


def _is_sign(node: ov.Node) -> bool:
    return node.get_type_name() == "FakeQuantize" and node.get_attributes()["levels"] == 2


def _is_any_convolution(node: ov.Node) -> bool:
    return _is_convolution(node) or node.get_type_name() == "BinaryConvolution"


def fake_quantizes_on_mask(model: ov.Model, mask_output: str = MASK) -> list[str]:
    """FakeQuantize nodes the mask passes through or is computed from: anything upstream of a
    masking Multiply's mask input or of the `mask` output, back to the OMG's convolutions.
    Empty when the mask reaches every conv exactly as the argmax produced it."""
    path = find_mask_path(model, mask_output)
    starts = [node.input_value(port) for node, port in path.multiplies]
    starts.append(output_node(model, mask_output).input_value(0))
    upstream = _upstream(starts, stop=_is_convolution)
    return sorted(node.get_friendly_name() for node in upstream if node.get_type_name() == "FakeQuantize")


def quantizers_not_keeping_zero(model: ov.Model, mask_output: str = MASK) -> list[str]:
    """Ops between a masking Multiply and the conv behind it that would not give that conv exact
    zeros on the background. NNCF's form: a FakeQuantize for which 0 is not a quantization level
    (when 0 is a level it becomes the integer zero point, so the INT8 conv adds exactly nothing
    for it). The integer form of `export.lean_graph` (8-bit levels times the mask, Convert, a
    constant scale): anything else than a conversion or a constant scaling there."""
    path = find_mask_path(model, mask_output)
    return sorted(node.get_friendly_name()
                  for multiply, _ in path.multiplies
                  for node in _conv_input_chain(multiply)[0]
                  if not (_zero_is_a_level(node) if node.get_type_name() == "FakeQuantize"
                          else node.get_type_name() == "Convert" or _is_constant_scaling(node)))


def _zero_is_a_level(fq: ov.Node, tolerance: float = 1e-3) -> bool:
    """OpenVINO FakeQuantize maps [in_low, in_high] to `levels` steps and step k to
    out_low + k * (out_high - out_low) / (levels - 1): 0 survives when it is inside the input
    range at a whole step k, and step k comes out as 0 (same input and output ranges)."""
    in_low, in_high, out_low, out_high = (_constant(fq.input_value(i)) for i in range(1, 5))
    steps = fq.get_attributes()["levels"] - 1
    k = -in_low / (in_high - in_low) * steps
    k_out = -out_low / (out_high - out_low) * steps
    return bool(np.all((in_low <= 0) & (0 <= in_high) & (np.abs(k - np.round(k)) < tolerance)
                       & (np.abs(k - k_out) < tolerance)))


def _is_convolution(node: ov.Node) -> bool:
    return node.get_type_name() in CONVOLUTIONS


def _conv_input_chain(multiply: ov.Node) -> tuple[list[ov.Node], bool]:
    """(every op the Multiply's output passes through before a conv, whether a conv reads it)."""
    chain, reaches_conv, seen, pending = [], False, set(), [multiply]
    while pending:
        for node, _ in (consumer for output in pending.pop().outputs() for consumer in _consumers(output)):
            if _is_convolution(node):
                reaches_conv = True
            elif node.get_type_name() not in ("Result", *SHAPE_ONLY) and _key(node) not in seen:
                seen.add(_key(node))
                chain.append(node)
                pending.append(node)
    return chain, reaches_conv


def _is_constant_scaling(node: ov.Node) -> bool:
    return node.get_type_name() == "Multiply" and any(
        value.get_node().get_type_name() == "Constant" for value in node.input_values())


def _constant(value: ov.Output) -> np.ndarray:
    node = value.get_node()
    if node.get_type_name() != "Constant":
        raise ValueError(f"FakeQuantize limit {node.get_friendly_name()} is not a constant")
    return node.get_data().astype(np.float64)


def _upstream(starts: Iterable[ov.Output], stop: Callable[[ov.Node], bool]) -> list[ov.Node]:
    """Ops reachable backwards from `starts`, not entering `stop` nodes, constants, parameters,
    or the data input of shape-only ops."""
    found, seen = [], set()
    pending = deque(value.get_node() for value in starts)
    while pending:
        node = pending.popleft()
        if _key(node) in seen or stop(node) or node.get_type_name() in ("Constant", "Parameter"):
            continue
        seen.add(_key(node))
        found.append(node)
        if node.get_type_name() not in SHAPE_ONLY:
            pending.extend(value.get_node() for value in node.input_values())
    return found


def _consumers(output: ov.Output) -> list[tuple[ov.Node, int]]:
    return [(target.get_node(), target.get_index()) for target in output.get_target_inputs()]


def _key(node: ov.Node) -> str:
    # Friendly names may repeat; the instance id is unique within a model.
    return f"{node.get_friendly_name()}#{node.get_instance_id()}"
