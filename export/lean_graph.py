"""Exact rewrites of the converted BABO graph into forms the OpenVINO CPU plugin runs faster.

The eager model stays the reference; each rewrite computes the same function (up to float
rounding of equal sums) and is checked against PyTorch by the export's parity and by tests.

- `lean_mask_source` (FP32, before quantization): the OMG's 2-class logits are upsampled
  bilinearly to the detector size and arg-maxed (`Interpolate` -> `TopK` -> `Convert`, the
  slowest part of the OMG). Upsampling is linear and the argmax of two classes is `l1 > l0`
  (a tie gives class 0, as argmax), so the mask is `up(l1 - l0) > 0`: one channel upsampled
  by two constant MatMuls holding the bilinear weights, then `Greater`.
- `lean_downscales` (FP32, every model): a bilinear resize by an integer factor s (the OMG's
  input, half the detector's size) reads, for every output pixel, the same weights on its own
  s x s block of input pixels (a 2x2 mean for s = 2). As a depthwise conv of stride s with those
  weights it is one fused kernel instead of Reorder -> Interpolate (benchmarks/README.md).
- `integer_mask_multiplies` (INT8, after NNCF): a masking `Multiply(x, m)` followed by a conv
  input quantizer `FQ` (levels k = 0..255, output (k - z) * step with z the level of 0) becomes
  the same quantizer with integer outputs k - z, converted to u8/i8, multiplied by the mask
  converted alike, then dequantized by `* step`. With m in {0, 1}, FQ(x * m) == FQ(x) * m, so
  the conv reads the very integers it read before, and exact zeros on the background (no zero
  point is subtracted). The CPU plugin never fuses a Multiply whose second input is not a
  constant: before, it merged each one with the FQ behind it, so the conv making x could not
  write int8 (most wrote bf16/f32 while vanilla's write u8); now the quantizer fuses into that
  conv, which writes u8, the Multiply runs on 8-bit data and `* step` folds into the next conv.
"""
from __future__ import annotations

import numpy as np
import openvino as ov
import openvino.opset13 as ops

from babo_edge.errors import BaboError
from babo_edge.export.mask_graph import find_mask_path
from babo_edge.ir_metadata import MASK


REWRITE_SUFFIX = "/lean"  # ends the friendly name of every node a rewrite adds in place of another


class RewriteError(BaboError, ValueError):
    """The graph does not have the structure a rewrite expects."""


def added_by_rewrite(node: ov.Node) -> bool:
    """A node a rewrite put in place of an op of the converted model (not one of the model's convs)."""
    return node.get_friendly_name().endswith(REWRITE_SUFFIX)


def bilinear_matrix(in_size: int, out_size: int) -> np.ndarray:
    """(out_size, in_size) float32 weights of 1-D bilinear resizing with align_corners=False
    (PyTorch's `F.interpolate(..., mode="bilinear")`, ONNX/OpenVINO `half_pixel`): output i
    reads source coordinate (i + 0.5) * in / out - 0.5, clamped at 0, from its two neighbours."""
    src = np.maximum((np.arange(out_size) + 0.5) * (in_size / out_size) - 0.5, 0.0)
    low = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
    high = np.minimum(low + 1, in_size - 1)
    frac = src - low
    weights = np.zeros((out_size, in_size), np.float64)
    np.add.at(weights, (np.arange(out_size), low), 1.0 - frac)
    np.add.at(weights, (np.arange(out_size), high), frac)
    return weights.astype(np.float32)


def lean_graph(model: ov.Model) -> ov.Model:
    """`model` with the FP32 rewrites applied in place: the integer downscales, and the mask
    source of a model with a mask."""
    lean_downscales(model)
    if MASK in {name for output in model.outputs for name in output.get_names()}:
        lean_mask_source(model)
    return model


def lean_downscales(model: ov.Model) -> int:
    """Interpolate(bilinear, half_pixel) by integer factors (sh, sw)  ==>  GroupConvolution with
    stride (sh, sw) and the resize's weights on each block, in place; returns how many. Only
    where the bilinear weights are exactly that block pattern (checked, not assumed)."""
    rewritten = 0
    for resize in [op for op in model.get_ordered_ops() if op.get_type_name() == "Interpolate"]:
        shape, out_shape = resize.get_input_partial_shape(0), resize.get_output_partial_shape(0)
        if not (_is_bilinear_half_pixel(resize) and shape.rank.is_static and shape.rank.get_length() == 4
                and shape[1].is_static and all(shape[i].is_static and out_shape[i].is_static for i in (2, 3))):
            continue
        sizes = [(shape[i].get_length(), out_shape[i].get_length()) for i in (2, 3)]
        kernels = [_block_weights(in_size, out_size) for in_size, out_size in sizes]
        if any(kernel is None for kernel in kernels) or all(len(kernel) == 1 for kernel in kernels):
            continue
        channels = shape[1].get_length()
        weights = np.broadcast_to(np.outer(*kernels), (channels, 1, 1, *map(len, kernels)))
        strides = [len(kernel) for kernel in kernels]
        conv = ops.group_convolution(resize.input_value(0), ops.constant(np.ascontiguousarray(weights)),
                                     strides, [0, 0], [0, 0], [1, 1])
        _replace(resize, conv)
        rewritten += 1
    return rewritten


def _block_weights(in_size: int, out_size: int) -> np.ndarray | None:
    """The 1-D weights every output of a bilinear resize in_size -> out_size reads on its own
    block of in_size / out_size inputs, or None when the resize is not that."""
    if out_size > in_size or in_size % out_size:
        return None
    factor = in_size // out_size
    matrix = bilinear_matrix(in_size, out_size)
    kernel = matrix[0, :factor]
    return kernel if np.array_equal(matrix, np.kron(np.eye(out_size, dtype=np.float32), kernel)) else None


def lean_mask_source(model: ov.Model) -> None:
    """Interpolate(2-class logits) -> TopK -> Convert  ==>  MatMul(Wh, MatMul(l1 - l0, Ww^T))
    > 0 -> Convert, in place (see the module docstring)."""
    path = find_mask_path(model)
    topk = path.source
    resize = topk.input_value(0).get_node()
    index_users = list(topk.output(1).get_target_inputs())
    if (topk.get_type_name() != "TopK" or resize.get_type_name() != "Interpolate"
            or not _is_bilinear_half_pixel(resize) or len(index_users) != 1
            or index_users[0].get_node().get_type_name() != "Convert" or topk.output(0).get_target_inputs()):
        raise RewriteError("the mask does not come from Interpolate -> TopK -> Convert")
    logits = resize.input_value(0)
    # The batch may be dynamic; classes and spatial sizes are static.
    classes, h, w = (logits.get_partial_shape()[i].get_length() for i in (1, 2, 3))
    out_h, out_w = (resize.get_output_partial_shape(0)[i].get_length() for i in (2, 3))
    if classes != 2 or topk.get_attributes()["axis"] != 1:
        raise RewriteError(f"the mask is an argmax over {classes} classes, not 2")
    convert = index_users[0].get_node()
    background, foreground = ops.split(logits, 1, 2).outputs()
    margin = ops.subtract(foreground, background)
    rows = ops.matmul(ops.constant(bilinear_matrix(h, out_h)), margin, False, False)
    upsampled = ops.matmul(rows, ops.constant(bilinear_matrix(w, out_w)), False, True)
    mask = ops.convert(ops.greater(upsampled, ops.constant(np.float32(0))), convert.get_output_element_type(0))
    _replace(convert, mask)


def integer_mask_multiplies(model: ov.Model) -> int:
    """Multiply(x, mask) -> FQ  ==>  Convert_int(FQ_int(x)) * Convert_int(mask) -> Convert_f32 ->
    * scale, in place, for every masking Multiply whose only consumer is a conv input quantizer
    FQ (see the module docstring); returns how many were rewritten. RewriteError when such an FQ
    does not map 0 to an integer level with in and out ranges equal, as NNCF makes them."""
    path = find_mask_path(model)
    integer_masks: dict[tuple[int, int, str], ov.Node] = {}
    rewritten = 0
    for multiply, mask_port in path.multiplies:
        users = list(multiply.output(0).get_target_inputs())
        if len(users) != 1 or users[0].get_node().get_type_name() != "FakeQuantize":
            continue
        fq = users[0].get_node()
        zero, scale, dtype = _integer_grid(fq)
        levels = fq.get_attributes()["levels"]
        quantized = ops.fake_quantize(multiply.input_value(1 - mask_port), fq.input_value(1), fq.input_value(2),
                                      ops.constant(np.float32(-zero)), ops.constant(np.float32(levels - 1 - zero)),
                                      levels)
        mask = multiply.input_value(mask_port)
        key = (mask.get_node().get_instance_id(), mask.get_index(), np.dtype(dtype).name)
        if key not in integer_masks:
            integer_masks[key] = ops.convert(mask, dtype)
        product = ops.multiply(ops.convert(quantized, dtype), integer_masks[key])
        dequantized = ops.multiply(ops.convert(product, np.float32), ops.constant(scale))
        for node, name in ((quantized, "quantize"), (product, "mask"), (dequantized, "dequantize")):
            node.set_friendly_name(f"{fq.get_friendly_name()}/{name}")
        fq.output(0).replace(dequantized.output(0))
        rewritten += 1
    return rewritten


def _integer_grid(fq: ov.Node) -> tuple[int, np.ndarray, type]:
    """(zero point, step, integer type) of a conv input quantizer whose input and output ranges
    are equal and whose grid holds 0 at the same integer level in every channel: its output is
    (k - zero) * step for the integer level k."""
    low, high, out_low, out_high = (fq.input_value(i).get_node() for i in range(1, 5))
    if any(node.get_type_name() != "Constant" for node in (low, high, out_low, out_high)):
        raise RewriteError(f"{fq.get_friendly_name()}: quantizer limits are not constants")
    low, high, out_low, out_high = (node.get_data().astype(np.float64) for node in (low, high, out_low, out_high))
    levels = fq.get_attributes()["levels"]
    step = (high - low) / (levels - 1)
    zero = -low / step
    if not (np.array_equal(low, out_low) and np.array_equal(high, out_high)
            and np.allclose(zero, np.round(zero), atol=1e-3) and np.ptp(np.round(zero)) == 0):
        raise RewriteError(f"{fq.get_friendly_name()}: 0 is not one integer level of the quantizer")
    zero = int(np.round(zero).flat[0])
    for dtype in (np.uint8, np.int8):
        info = np.iinfo(dtype)
        if info.min <= -zero and levels - 1 - zero <= info.max:
            return zero, step.astype(np.float32), dtype
    raise RewriteError(f"{fq.get_friendly_name()}: {levels} levels around zero level {zero} fit no 8-bit type")


def _is_bilinear_half_pixel(node: ov.Node) -> bool:
    attributes = node.get_attributes()
    return (attributes.get("mode") in ("linear", "linear_onnx") and not attributes.get("antialias")
            and attributes.get("coordinate_transformation_mode") == "half_pixel"
            and not any(attributes.get("pads_begin", [])) and not any(attributes.get("pads_end", [])))


def _replace(old: ov.Node, new: ov.Node) -> None:
    """`new` takes the place of `old`'s only output, tensor names included; its name says it is
    a rewrite (`added_by_rewrite`)."""
    new.set_friendly_name(old.get_friendly_name() + REWRITE_SUFFIX)
    names = old.output(0).get_names()
    old.output(0).replace(new.output(0))
    new.output(0).set_names(names)
