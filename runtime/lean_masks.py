"""The mask Multiplies a dense BABO graph can skip at compile time without changing a detection.

A 1x1 stride-1 conv computes each output pixel from the same input pixel alone, so masking its
input changes only its outputs on blacked-out pixels. Those never reach a detection: every conv
that mixes pixels (3x3, strided) has its own masked input, and the IR's post-processing scores
every anchor on a blacked-out cell 0 (`model_info` `blacked_out_anchors = "background"`). So a
mask Multiply whose product reaches pointwise convs only (through elementwise ops: converts,
quantizers, constant scalings) can be bypassed, and that conv then reads its quantized input as in
vanilla (on this CPU plugin a Multiply by a non-constant runs as its own node).

The IR keeps every mask Multiply (all conv inputs are exact zeros on the background, which the
MAC* report and the on-device sparsity counters measure): only the compiled dense graph loses
them. A product that also feeds anything else (a sparsity counter, the mask output, scoring) is
kept, so an instrumented model is never changed where it is counted.
"""
from __future__ import annotations

from collections import deque
from collections.abc import Iterable

import openvino as ov

from babo_edge.ir_metadata import MASK

CONVOLUTIONS = ("Convolution", "GroupConvolution")
ELEMENTWISE = ("Convert", "FakeQuantize", "Multiply", "Add", "Subtract")


def drop_pointwise_masks(model: ov.Model, names: Iterable[str] = (MASK,)) -> int:
    """Bypasses, in place, every mask Multiply whose product reaches pointwise convs only (see the
    module docstring); returns how many. Masks are the value of the output and the inputs called
    one of `names` (a detector or crop model cut from the IR has its masks as inputs); requires
    mask-aware post-processing (the caller checks). A model without a mask is left as it is (0)."""
    names = set(names)
    masks = [port.get_node().input_value(0) for port in model.outputs if names & port.get_names()]
    masks += [port for port in model.inputs if names & port.get_names()]
    dropped = 0
    for multiply, data_port in (found for mask in masks for found in _mask_multiplies(mask)):
        if _reaches_pointwise_convs_only(multiply):
            multiply.output(0).replace(multiply.input_value(data_port))
            dropped += 1
    return dropped


def _mask_multiplies(mask: ov.Output) -> list[tuple[ov.Node, int]]:
    """(Multiply, index of its data input) for every Multiply applying the mask: the mask's
    consumers are followed through everything that carries it (pooling, converts, reshapes)."""
    on_mask_side = {mask.get_node().get_instance_id()}
    pending = deque(_consumers(mask.get_node()))
    found = []
    while pending:
        node, port = pending.popleft()
        if node.get_instance_id() in on_mask_side or node.get_type_name() == "Result" or node.get_type_name() in CONVOLUTIONS:
            continue
        on_mask_side.add(node.get_instance_id())
        if node.get_type_name() == "Multiply":
            found.append((node, 1 - port))
        else:
            pending.extend(_consumers(node))
    # A Multiply of two mask-derived values (not data) is not a masking one.
    return [(node, data) for node, data in found
            if node.input_value(data).get_node().get_instance_id() not in on_mask_side]


def _reaches_pointwise_convs_only(multiply: ov.Node) -> bool:
    pending, seen, convs = [multiply], set(), 0
    while pending:
        for node, port in _consumers(pending.pop()):
            if node.get_type_name() in CONVOLUTIONS:
                if port != 0 or not _is_pointwise(node):
                    return False
                convs += 1
            elif node.get_type_name() in ELEMENTWISE and _other_inputs_constant(node, port):
                if node.get_instance_id() not in seen:
                    seen.add(node.get_instance_id())
                    pending.append(node)
            else:
                return False
    return convs > 0


def _is_pointwise(conv: ov.Node) -> bool:
    kernel = conv.input(1).get_partial_shape()
    attributes = conv.get_attributes()
    return (kernel.is_static and list(kernel.to_shape())[-2:] == [1, 1] and list(attributes["strides"]) == [1, 1]
            and not any(attributes["pads_begin"]) and not any(attributes["pads_end"]))


def _other_inputs_constant(node: ov.Node, port: int) -> bool:
    """The elementwise op is a function of the masked value alone (constants for the rest), so it
    is pointwise too; a FakeQuantize's limits are constants in an NNCF model."""
    return all(_is_constant(value.get_node()) for index, value in enumerate(node.input_values()) if index != port)


def _is_constant(node: ov.Node) -> bool:
    while node.get_type_name() == "Convert":  # a compressed (f16) constant
        node = node.input_value(0).get_node()
    return node.get_type_name() == "Constant"


def _consumers(node: ov.Node) -> list[tuple[ov.Node, int]]:
    return [(target.get_node(), target.get_index()) for output in node.outputs() for target in output.get_target_inputs()]
