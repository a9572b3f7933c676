"""Sparse-scene execution of a BABO IR: the OMG first, then nothing, a crop, or the dense detector.

Exact (the dense graph's detections) because every conv input of the detector is masked, so a
foreground activation depends only on foreground inputs, and because the IR's post-processing
scores every anchor on a blacked-out cell 0 (`model_info` `blacked_out_anchors = "background"`):
head outputs there never matter, so no background constants are needed.

- empty mask: no detection can survive, the detector does not run.
- ROI: the foreground's bounding box (from the OMG's row and column maxima of the mask: H + W
  values for the host to scan), snapped to the stride-32 grid (the backbone's output stride:
  `ROI_STRIDE`), runs the fine part (backbone and the heads at strides <= 32) on the
  crop; its outputs are pasted (padded with zeros to the crop's offset) into
  full-size maps, and the coarse part (SSDLite extra layers, heads, decoding, NMS) runs densely
  on them. Outside the crop the dense graph sees exact zeros too at every conv input, and the
  pasted head maps are read only at anchors the mask keeps alive.

The sub-models are cut from the IR at run time by OpenVINO graph surgery (torch-free) rather
than exported as extra IRs: any IR exported with mask-aware post-processing runs sparse, with
or without the exporter's graph rewrites, and each crop size gets its own static model (dynamic
shapes cost +27-34% on this CPU) built on demand from the one .xml. Cut points are found by
structure: the `mask` output's value, the spatial level of each op's output and op kinds. One
fused model per crop size (fine part on the host's crops of image and mask, paste, coarse part)
keeps a frame at two inference calls (OMG, detector; one when "auto" runs the dense graph) and
hands every feature over inside the graph, in its own precision.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import openvino as ov
import openvino.opset13 as ops

from babo_edge.errors import BaboError
from babo_edge.ir_metadata import DETECTIONS, MASK
from babo_edge.runtime.lean_masks import drop_pointwise_masks
ROI_STRIDE = 32
CONVOLUTIONS = ("Convolution", "GroupConvolution")
# Ops whose output at a location reads only that location (convs: the aligned window of the
# ceil-mode pyramid): they may run on a crop. Pools and channel reductions: see SparsePlan._is_local.
LOCAL_OPS = (*CONVOLUTIONS, "Add", "Subtract", "Multiply", "Divide", "Maximum", "Minimum", "Clamp", "Relu",
             "PRelu", "Sigmoid", "Swish", "HSwish", "HSigmoid", "Exp", "Sqrt", "Power", "Convert", "FakeQuantize")
POOLS = ("MaxPool", "AvgPool")
CHANNEL_REDUCTIONS = ("ReduceSum", "ReduceMean", "ReduceMax", "ReduceL2")
MASK_INPUT = "mask"
OFFSET_INPUT = "roi_offset"  # (2,) int64: the crop's origin in stride-32 cells (row, column)
IMAGE_CROP, MASK_CROP = "image_crop", "mask_crop"  # the ROI model's crops of the image and the mask


class SparseError(BaboError, ValueError):
    """The IR cannot run sparse (no mask, no mask-aware post-processing, or an unknown structure)."""


def _result_of(model: ov.Model, name: str) -> ov.Node:
    """The Result node of output `name` (as export.mask_graph.output_node: runtime/ does not import export/)."""
    for result in model.get_results():
        if name in result.input_value(0).get_names() or name in result.output(0).get_names():
            return result
    raise SparseError(f"the model has no {name!r} output")


def _reads(node: ov.Node, parameter: ov.Node) -> bool:
    """Whether `node`'s value depends on `parameter`."""
    seen, stack = set(), [node]
    while stack:
        current = stack.pop()
        if current.get_instance_id() == parameter.get_instance_id():
            return True
        for value in current.input_values():
            if value.get_node().get_instance_id() not in seen:
                seen.add(value.get_node().get_instance_id())
                stack.append(value.get_node())
    return False


def pyramid_sizes(input_hw: tuple[int, int], levels: int) -> list[tuple[int, int]]:
    """(h, w) of the mask pyramid's levels 0..levels (ceil-mode halving)."""
    sizes = [tuple(input_hw)]
    for _ in range(levels):
        sizes.append((math.ceil(sizes[-1][0] / 2), math.ceil(sizes[-1][1] / 2)))
    return sizes


@dataclass(frozen=True)
class _Cut:
    producer: int  # index in the detector model's ordered ops
    port: int
    consumer: int
    input: int
    level: int  # pyramid level of the produced map (stride 2**level); -1: read by a ShapeOf


class SparsePlan:
    """The sub-models of one BABO IR: `omg` (image -> mask, its row and column maxima), `dense`
    (the whole IR, plus those maxima), `detector` (image, mask -> detections: the dense detector
    after the OMG) and `roi(h, w)` (image_crop, mask_crop, roi_offset -> detections: the fine
    part on an h x w crop)."""

    def __init__(self, model: ov.Model, input_hw: tuple[int, int]):
        self.input_hw = tuple(input_hw)
        self.cell_levels = int(math.log2(ROI_STRIDE))
        if min(self.input_hw) <= ROI_STRIDE:
            raise SparseError(f"input {self.input_hw} is too small for ROI execution (needs > {ROI_STRIDE} px)")
        self.omg = self._projected(model.clone(), (MASK,), "babo_omg")  # the OMG alone
        self.dense = self._projected(model.clone(), (DETECTIONS, MASK), "babo_dense")
        self.detector = self._detector(model.clone())
        self._ops = self.detector.get_ordered_ops()
        self._cuts = self._find_cuts()

    @property
    def cells(self) -> tuple[int, int]:
        return tuple(math.ceil(side / ROI_STRIDE) for side in self.input_hw)

    @staticmethod
    def _projected(model: ov.Model, keep: tuple[str, ...], name: str) -> ov.Model:
        """`model`'s `keep` outputs plus the mask's row and column maxima (`mask_rows`,
        `mask_cols`): the host finds the box in H + W values instead of H x W."""
        mask = _result_of(model, MASK).input_value(0)
        rows = ops.reduce_max(mask, ops.constant(np.array([0, 1, 3], np.int64)), keep_dims=False)
        cols = ops.reduce_max(mask, ops.constant(np.array([0, 1, 2], np.int64)), keep_dims=False)
        projections = [ops.result(rows), ops.result(cols)]
        for result, output in zip(projections, ("mask_rows", "mask_cols")):
            result.output(0).get_tensor().set_names({output})
        projected = ov.Model([*(_result_of(model, output) for output in keep), *projections],
                             model.get_parameters(), name)
        projected.validate_nodes_and_infer_types()
        return projected

    @staticmethod
    def _detector(model: ov.Model) -> ov.Model:
        """The detector on a given mask: the `mask` output's value replaced by a parameter."""
        mask = _result_of(model, MASK).input_value(0)
        parameter = ops.parameter(mask.get_partial_shape(), mask.get_element_type(), name=MASK_INPUT)
        parameter.output(0).get_tensor().set_names({MASK_INPUT})
        for target in list(mask.get_target_inputs()):
            if target.get_node().get_type_name() != "Result":
                target.replace_source_output(parameter.output(0))
        image = model.get_parameters()[0]
        try:
            detector = ov.Model([_result_of(model, DETECTIONS)], [image, parameter], "babo_detector")
        except RuntimeError:
            raise SparseError("the detections depend on the OMG other than through its mask") from None
        detector.validate_nodes_and_infer_types()
        return detector

    def _find_cuts(self) -> list[_Cut]:
        """Classifies every op of the detector as constant, mask (computed from the mask alone),
        fine (a local op on a map at stride <= 32, from the image) or coarse, and returns the
        fine -> coarse edges: where the crop's maps are pasted back. A pasted map must be exact
        outside the crop too: a masked conv input (zero there) or a head output (read only at
        anchors the mask keeps alive). A fine map that a coarse op reads otherwise (VGG's
        overlapping pool5 reads a conv's output) is demoted to coarse, with whatever follows it,
        until every cut is one of those two: that part then runs densely on the full canvas.
        The mask -> coarse edges are cuts too: a mask map on the crop's grid (a pyramid level up
        to the cells') that a coarse op or a coarser mask map reads is pasted from the crop's own
        pyramid, the same values since the mask is zero outside the crop, and the full-size mask
        pyramid is not computed at all."""
        levels = {size: k for k, size in reversed(list(enumerate(pyramid_sizes(self.input_hw, self.cell_levels))))}
        index = {op.get_instance_id(): i for i, op in enumerate(self._ops)}
        demoted: set[int] = set()
        while True:
            cuts, violation = self._classify(demoted, levels, index)
            if violation is None:
                break
            demoted.add(violation)
        if not cuts:
            raise SparseError("found no fine -> coarse boundary in the detector")
        return cuts

    def _classify(self, demoted: set[int], levels: dict, index: dict) -> tuple[list[_Cut], int | None]:
        """The cuts when the ops in `demoted` are coarse, or the first fine op whose map a coarse
        op reads and that cannot be pasted exactly (to demote). `levels`: pyramid level of each
        map size; `index`: op instance id -> position in the ordered ops."""
        kinds, level_of, cuts = [], {}, []
        on_grid: set[int] = set()  # mask maps at a pyramid level <= the cells' (the crop computes them)
        image, mask = self.detector.get_parameters()
        for i, op in enumerate(self._ops):
            producers = [index[value.get_node().get_instance_id()] for value in op.input_values()]
            inputs = [kinds[p] for p in producers]
            level = self._level(op, levels)
            if op.get_type_name() == "Constant":
                kind = "constant"
            elif op.get_instance_id() == image.get_instance_id():
                kind, level_of[i] = "fine", 0
            elif op.get_instance_id() == mask.get_instance_id() or (inputs and set(inputs) <= {"constant", "mask"}):
                kind = "mask"
            elif i not in demoted and "coarse" not in inputs and self._is_local(op) and level is not None:
                kind, level_of[i] = "fine", level
            else:
                kind = "coarse"
            kinds.append(kind)
            if kind == "mask" and level is not None and (
                    op.get_instance_id() == mask.get_instance_id()
                    or (self._is_local(op) and all(p in on_grid or kinds[p] == "constant" for p in producers))):
                on_grid.add(i)
                level_of[i] = level
                continue
            if kind not in ("mask", "coarse"):
                continue
            for port, (value, producer) in enumerate(zip(op.input_values(), producers)):
                if producer in on_grid:
                    cuts.append(_Cut(producer, value.get_index(), i, port,
                                     -1 if op.get_type_name() == "ShapeOf" else level_of[producer]))
                    continue
                if kind != "coarse" or kinds[producer] != "fine":
                    continue
                if op.get_type_name() == "ShapeOf":  # of a static map: becomes a constant
                    cuts.append(_Cut(producer, value.get_index(), i, port, -1))
                    continue
                if not (op.get_type_name() in CONVOLUTIONS or self._is_head_output(value.get_node())):
                    if self._ops[producer].get_type_name() == "Parameter":
                        raise SparseError(f"cannot run {op.get_friendly_name()} ({op.get_type_name()}) after a crop: "
                                          "its input is neither a masked conv input nor a head output")
                    return [], producer
                cuts.append(_Cut(producer, value.get_index(), i, port, level_of[producer]))
        return cuts, None

    @staticmethod
    def _is_local(op: ov.Node) -> bool:
        """An op whose output at a location reads only that location or, for convs and
        non-overlapping pools (kernel = stride, no padding), the aligned window of the ceil-mode
        pyramid; reductions over the channels alone (VGG's L2Norm) are per location too."""
        kind = op.get_type_name()
        if kind in POOLS:
            attributes = op.get_attributes()
            return (list(attributes["kernel"]) == list(attributes["strides"])
                    and not any(attributes["pads_begin"]) and not any(attributes["pads_end"])
                    and all(len(op.output(k).get_target_inputs()) == 0 for k in range(1, op.get_output_size())))
        if kind in CHANNEL_REDUCTIONS:
            axes = op.input_value(1).get_node()
            return (axes.get_type_name() == "Constant" and op.get_attributes().get("keep_dims", False)
                    and sorted(int(a) % 4 for a in axes.get_data().ravel()) == [1])
        return kind in LOCAL_OPS

    @staticmethod
    def _level(op: ov.Node, levels: dict) -> int | None:
        shape = op.get_output_partial_shape(0)
        if not shape.is_static or len(shape) != 4:
            return None
        return levels.get((shape[2].get_length(), shape[3].get_length()))

    @staticmethod
    def _is_head_output(node: ov.Node) -> bool:
        """A conv's output (with its bias): read per anchor, scored 0 where blacked out."""
        if node.get_type_name() == "Add":
            return any(value.get_node().get_type_name() in CONVOLUTIONS for value in node.input_values())
        return node.get_type_name() in CONVOLUTIONS

    def roi(self, crop_hw: tuple[int, int]) -> ov.Model:
        """The detector whose fine part runs on `image_crop` and `mask_crop` (crop_hw pixels, cut
        by the host: cropping in the graph made the plugin convert the whole image to bf16 first)
        at the origin given by `roi_offset` (stride-32 cells), its coarse part on the pasted maps;
        the full `mask` is an input only if some coarse op reads it otherwise than on the grid."""
        crop_h, crop_w = crop_hw
        fine, coarse = self.detector.clone(), self.detector.clone()
        fine_ops, coarse_ops = fine.get_ordered_ops(), coarse.get_ordered_ops()
        image, mask = fine.get_parameters()
        for parameter, name in ((image, IMAGE_CROP), (mask, MASK_CROP)):
            parameter.set_partial_shape(ov.PartialShape([1, parameter.get_partial_shape()[1].get_length(), *crop_hw]))
            parameter.set_friendly_name(name)
            parameter.output(0).get_tensor().set_names({name})
        offset = ops.parameter([2], ov.Type.i64, name=OFFSET_INPUT)
        offset.output(0).get_tensor().set_names({OFFSET_INPUT})

        # Shapes of the fine part on the crop, before pasting it.
        producers = {(cut.producer, cut.port) for cut in self._cuts if cut.level >= 0}
        ov.Model([ops.result(fine_ops[i].output(port)) for i, port in producers], [image, mask, offset]
                 ).validate_nodes_and_infer_types()
        coarse_mask = coarse.get_parameters()[1]
        pasted = {}
        for cut in self._cuts:
            if cut.level < 0:
                shape_of = coarse_ops[cut.consumer]
                value = ops.constant(np.array(self._ops[cut.producer].get_output_shape(cut.port),
                                              shape_of.get_output_element_type(0).to_dtype()))
                for target in list(shape_of.output(0).get_target_inputs()):
                    target.replace_source_output(value.output(0))
                continue
            key = (cut.producer, cut.port)
            if key not in pasted:
                full = self._ops[cut.producer].output(cut.port)
                pasted[key] = self._paste(fine_ops[cut.producer].output(cut.port), full, cut.level, offset, crop_hw)
            coarse_ops[cut.consumer].input(cut.input).replace_source_output(pasted[key])
        detections = _result_of(coarse, DETECTIONS)
        parameters = [image, mask, *([coarse_mask] if _reads(detections, coarse_mask) else []), offset]
        roi = ov.Model([detections], parameters, f"babo_roi_{crop_h}x{crop_w}")
        roi.validate_nodes_and_infer_types()
        return roi

    @staticmethod
    def _paste(value: ov.Output, full: ov.Output, level: int, offset: ov.Node, crop_hw) -> ov.Output:
        """`value` (1, C, h, w) on the crop -> (1, C, H, W) at the crop's place (`offset` in
        stride-32 cells), zeros elsewhere: a Pad by run-time amounts, reshaped to the static full
        shape (cheaper than ScatterUpdates into broadcast zeros: benchmarks/README.md)."""
        shape = full.get_partial_shape().to_shape()
        h, w = (math.ceil(side / (1 << level)) for side in crop_hw)
        start = ops.multiply(offset, ops.constant(np.array([ROI_STRIDE >> level] * 2, np.int64)))
        zeros = ops.constant(np.zeros(2, np.int64))
        begin = ops.concat([zeros, start], 0)
        end = ops.concat([zeros, ops.subtract(ops.constant(np.array([shape[2] - h, shape[3] - w], np.int64)), start)], 0)
        padded = ops.pad(value, begin, end, "constant", ops.constant(np.zeros((), full.get_element_type().to_dtype())))
        return ops.reshape(padded, ops.constant(np.array(shape, np.int64)), False).output(0)


def crop_of(rows: np.ndarray, cols: np.ndarray, input_hw: tuple[int, int]) -> tuple[int, int, int, int] | None:
    """The mask's row and column maxima -> the foreground box snapped to the stride-32 grid as
    (y0, x0, h, w) input pixels (the far sides end on the grid or the input's edge), or None
    for an empty mask."""
    ys, xs = np.flatnonzero(rows), np.flatnonzero(cols)
    if ys.size == 0:
        return None
    box = []
    for found, side in zip((ys, xs), input_hw):
        start = int(found[0]) // ROI_STRIDE * ROI_STRIDE
        end = min((int(found[-1]) // ROI_STRIDE + 1) * ROI_STRIDE, side)
        # A partial last cell of <= 16 px alone is 1 px at stride 16, too small for the mask's
        # 2x2 max-pool: one more cell (the input is > 32 px).
        start = start - ROI_STRIDE if end - start <= ROI_STRIDE // 2 else start
        box += [start, end - start]
    return box[0], box[2], box[1], box[3]


@dataclass(frozen=True)
class CostModel:
    """Latencies (s) measured when the models are compiled: the OMG, the detector after it, the
    whole dense graph (one call), and ROI crops as `fixed + per_area * area` (area: fraction of
    the input), fitted to three crop sizes."""

    omg: float
    detector: float
    dense: float
    fixed: float
    per_area: float

    def roi(self, area: float) -> float:
        return self.fixed + self.per_area * area

    def frame(self, path: str, area: float | None) -> float:
        """A frame's time on `path`: "dense" (the one dense graph), "empty" (the OMG alone),
        "roi" (the OMG, then the crop of `area`) or "omg_dense" (the OMG, then the dense detector)."""
        if path == "dense":
            return self.dense
        if path == "empty":
            return self.omg
        return self.omg + (self.roi(area) if path == "roi" else self.detector)


OBSERVED_WEIGHT = 0.2  # weight of one frame's observed / predicted time in a path's running scale
EXPLORE_EVERY = 64  # frames (x its predicted cost ratio) after which the path not taken runs once again
PATHS = ("dense", "empty", "roi", "omg_dense")


class AdaptiveCost:
    """The compile-time CostModel, corrected by what the frames take: each path's prediction is
    scaled by a running average of observed / predicted (clock speed, load and caches change
    after compiling, and one path can suffer more than another), and a path that has not run
    for a while runs once to measure it again. Every path gives the same detections,
    so a wrong guess or an exploring frame costs only time."""

    def __init__(self, prior: CostModel):
        self.prior = prior
        self.scale = dict.fromkeys(PATHS, 1.0)
        self.idle = dict.fromkeys(PATHS, 0)  # frames since each path last ran
        self.count = dict.fromkeys(PATHS, 0)  # frames observed per path

    def predicted(self, path: str, area: float | None) -> float:
        return self.scale[path] * self.prior.frame(path, area)

    def omg_first(self, area: float | None) -> bool:
        """For a crop of `area` (None: empty mask; the previous frame's): the OMG first, rather
        than the one dense graph."""
        first = "empty" if area is None else min(("roi", "omg_dense"), key=lambda path: self.predicted(path, area))
        if self.predicted(first, area) < self.predicted("dense", area):
            return not self._explore(first, "dense", self.idle["dense"], area)
        return self._explore("dense", first, min(self.idle[path] for path in PATHS if path != "dense"), area)

    def prefers_roi(self, area: float, compiled: bool = True) -> bool:
        """Once the OMG has run: the crop rather than the dense detector. Not to explore a crop
        whose model is not `compiled` yet: compiling would be the measure."""
        if self.predicted("roi", area) < self.predicted("omg_dense", area):
            return not self._explore("roi", "omg_dense", self.idle["omg_dense"], area)
        return compiled and self._explore("omg_dense", "roi", self.idle["roi"], area)

    def _explore(self, chosen: str, other: str, idle: int, area: float | None) -> bool:
        """Whether to run `other` instead, idle for `idle` frames: after EXPLORE_EVERY frames,
        longer the dearer it is predicted, so exploring costs at most ~1/EXPLORE_EVERY of the time."""
        return idle >= EXPLORE_EVERY * max(1.0, self.predicted(other, area) / self.predicted(chosen, area))

    def observe(self, path: str, area: float | None, seconds: float) -> None:
        """One frame's time on `path`: the prior and the first frames are averaged alike, later
        frames weigh OBSERVED_WEIGHT (a wrong prior is left after a few frames)."""
        ratio = min(max(seconds / self.prior.frame(path, area), 0.25), 4.0)  # one preempted frame moves it little
        self.count[path] += 1
        self.scale[path] += max(OBSERVED_WEIGHT, 1 / (self.count[path] + 1)) * (ratio - self.scale[path])
        for name in PATHS:
            self.idle[name] = 0 if name == path else self.idle[name] + 1


class SparseRunner:
    """Runs one frame: `run(inputs) -> (outputs, execution, crop)`, with execution "empty" (no
    detector), "roi" or "dense" and crop (y0, x0, h, w) in input pixels (None: empty).

    `execution`: "roi" runs the OMG first and a crop whenever it is smaller than the input;
    "auto" asks the cost model (measured here, `repeats` runs per model, then corrected by the
    frames' own times: AdaptiveCost) with the previous frame's crop whether to run the OMG first
    at all (else the one dense graph: a camera's frames change little, and any choice gives the
    same detections), then which path. Crop
    models are compiled on first use of their size (a CACHE_DIR in `config` keeps them)."""

    def __init__(self, model: ov.Model, input_hw: tuple[int, int], core: ov.Core, device: str, config: dict,
                 execution: str, repeats: int = 20, lean_masks: bool = True):
        self.plan = SparsePlan(model, input_hw)
        self.core, self.device, self.config = core, device, config
        self.execution = execution
        self.lean_masks = lean_masks
        self._omg = core.compile_model(self.plan.omg, device, config).create_infer_request()
        self._mask = self._omg.get_tensor(MASK)
        self._detector = self._with_mask(self._compile(self.plan.detector).create_infer_request())
        self._rois: dict[tuple[int, int], ov.InferRequest] = {}
        self._full = self._compile(self.plan.dense).create_infer_request() if execution == "auto" else None
        self.cost = AdaptiveCost(self._measure(repeats)) if execution == "auto" else None
        self._previous_area: float | None = None  # crop area of the last frame (None: empty)

    def _compile(self, model: ov.Model) -> ov.CompiledModel:
        """A detector part, without the mask Multiplies that cannot change a detection unless
        `lean_masks` is off (runtime.lean_masks)."""
        if self.lean_masks:
            model = model.clone()
            drop_pointwise_masks(model, (MASK, MASK_CROP))
        return self.core.compile_model(model, self.device, self.config)

    def _with_mask(self, request: ov.InferRequest) -> ov.InferRequest:
        request.set_tensor(MASK_INPUT, self._mask)  # the OMG's output buffer: no copy per frame
        return request

    def roi_request(self, crop_hw: tuple[int, int]) -> ov.InferRequest:
        if crop_hw not in self._rois:
            compiled = self._compile(self.plan.roi(crop_hw))
            request = compiled.create_infer_request()
            reads_mask = any(MASK_INPUT in port.get_names() for port in compiled.inputs)
            self._rois[crop_hw] = self._with_mask(request) if reads_mask else request
        return self._rois[crop_hw]

    def run(self, inputs: np.ndarray) -> tuple[dict[str, np.ndarray], str, tuple[int, int, int, int] | None]:
        start, compiled = time.perf_counter(), len(self._rois)
        outputs, path, crop, area = self._run(inputs)
        if self.cost is not None and len(self._rois) == compiled:  # a frame that compiled a crop model is no measure
            self.cost.observe(path, area, time.perf_counter() - start)
        return outputs, "dense" if path == "omg_dense" else path, crop

    def _run(self, inputs: np.ndarray) -> tuple[dict[str, np.ndarray], str, tuple[int, int, int, int] | None, float | None]:
        """One frame -> (outputs, path of AdaptiveCost, crop, crop area)."""
        first = self.cost is None or self.cost.omg_first(self._previous_area)
        request = self._omg if first else self._full
        request.infer({0: inputs}, share_inputs=True)
        crop = crop_of(request.get_tensor("mask_rows").data, request.get_tensor("mask_cols").data, self.plan.input_hw)
        area = None if crop is None else crop[2] * crop[3] / (self.plan.input_hw[0] * self.plan.input_hw[1])
        self._previous_area = area
        outputs = {MASK: request.get_tensor(MASK).data.copy()}
        if not first:
            outputs[DETECTIONS] = request.get_tensor(DETECTIONS).data.copy()
            return outputs, "dense", crop, area
        if crop is None:
            outputs[DETECTIONS] = np.zeros((0, 7), np.float32)
            return outputs, "empty", None, None
        y0, x0, h, w = crop
        if (h, w) == self.plan.input_hw or (self.cost is not None and not self.cost.prefers_roi(area, (h, w) in self._rois)):
            request, path = self._detector, "omg_dense"
            request.infer({"image": inputs}, share_inputs=True)
        else:
            request, path = self.roi_request((h, w)), "roi"
            request.get_tensor(OFFSET_INPUT).data[:] = (y0 // ROI_STRIDE, x0 // ROI_STRIDE)
            request.infer({IMAGE_CROP: inputs[..., y0:y0 + h, x0:x0 + w],
                           MASK_CROP: outputs[MASK][..., y0:y0 + h, x0:x0 + w]})
        outputs[DETECTIONS] = request.get_tensor(DETECTIONS).data.copy()
        return outputs, path, crop, area

    def _measure(self, repeats: int) -> CostModel:
        """Latency of the dense detector and of ROI crops of 1, ~1/4 and ~1/2 of the cells
        (zero inputs: dense kernels take the same time whatever the values)."""
        inputs = np.zeros((1, 3, *self.plan.input_hw), np.float32)

        def median(request: ov.InferRequest, feed: dict) -> float:
            request.infer(feed)  # warm-up
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                request.infer(feed)
                times.append(time.perf_counter() - start)
            return float(np.median(times))

        rows, cols = self.plan.cells
        sizes = sorted({(1, 1), (max(1, rows // 2), max(1, cols // 2)), (max(1, rows // 2), cols)})
        areas, latencies = [], []
        for size_rows, size_cols in sizes:
            h, w = min(size_rows * ROI_STRIDE, self.plan.input_hw[0]), min(size_cols * ROI_STRIDE, self.plan.input_hw[1])
            request = self.roi_request((h, w))
            request.get_tensor(OFFSET_INPUT).data[:] = (0, 0)
            areas.append(h * w / (self.plan.input_hw[0] * self.plan.input_hw[1]))
            latencies.append(median(request, {IMAGE_CROP: inputs[..., :h, :w], MASK_CROP: self._mask.data[..., :h, :w]}))
        per_area, fixed = np.polyfit(areas, latencies, 1) if len(set(areas)) > 1 else (0.0, latencies[0])
        return CostModel(omg=median(self._omg, {0: inputs}), detector=median(self._detector, {"image": inputs}),
                         dense=median(self._full, {0: inputs}), fixed=float(fixed), per_area=float(per_area))
