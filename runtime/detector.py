"""A babo-edge OpenVINO IR run on camera frames, torch-free (openvino, numpy, cv2, stdlib).

Everything the runtime needs is in the IR: labels, input size and thresholds come from its
`rt_info["model_info"]` (the contract of babo_edge/ir_metadata.py), normalisation and post-processing
(NMS included) are inside the graph. Frames are OpenCV images (uint8 gray, BGR or BGRA); the
graph wants RGB float 0..255 at its input size, resized without letterbox; boxes come back
in frame pixels. Pre- and post-processing are module-level functions so that other runtime
tools (the sparsity counters) can run an instrumented copy of the model with the same steps.
"""
from __future__ import annotations


import os
import threading
import weakref
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import openvino as ov

from babo_edge import ir_metadata
from babo_edge.errors import BaboError
from babo_edge.ir_metadata import DETECTIONS, MASK, RAW_OUTPUTS, IRMetadata, MetadataError
from babo_edge.models.preprocess import to_model_input
from babo_edge.runtime.devices import DeviceError, check_static_for_npu, resolve_device
from babo_edge.runtime.lean_masks import drop_pointwise_masks
from babo_edge.runtime.sparse import SparseError, SparseRunner

HINTS = ("LATENCY", "THROUGHPUT", "CUMULATIVE_THROUGHPUT")
EXECUTIONS = ("dense", "roi", "auto")
_TO_RGB = {1: cv2.COLOR_GRAY2RGB, 3: cv2.COLOR_BGR2RGB, 4: cv2.COLOR_BGRA2RGB}


class ModelError(BaboError, ValueError):
    """The file or model is not a babo-edge IR this runtime can run."""


class FrameError(BaboError, ValueError):
    """A frame that is not a uint8 gray, BGR or BGRA image."""


@dataclass(frozen=True)
class Result:
    """Detections of one frame, best first."""

    boxes: np.ndarray  # (K, 4) float32 x1, y1, x2, y2 in frame pixels
    labels: np.ndarray  # (K,) int64, indices into `classes`
    scores: np.ndarray  # (K,) float32, descending
    classes: tuple[str, ...]
    frame_hw: tuple[int, int]
    mask: np.ndarray | None = None  # (h, w) uint8 {0, 1} at the model input size; None without OMG
    # Every output of the request (e.g. an instrumented model's zero counts), when the Detector
    # was made with keep_outputs=True.
    outputs: Mapping[str, np.ndarray] | None = field(default=None, repr=False)
    # How the detector ran: "dense", "roi" (on `roi`) or "empty" (empty mask: the OMG alone).
    execution: str = "dense"
    roi: tuple[float, float, float, float] | None = None  # x1, y1, x2, y2 of the crop in frame pixels

    @property
    def label_names(self) -> list[str]:
        return [self.classes[label] for label in self.labels]

    @property
    def fg_ratio(self) -> float | None:
        """Fraction of the frame the mask keeps (None without OMG)."""
        return None if self.mask is None else float(self.mask.mean(dtype=np.float64))

    def mask_at_frame_size(self) -> np.ndarray | None:
        """The mask resized (nearest) to the frame, e.g. to overlay it."""
        if self.mask is None:
            return None
        height, width = self.frame_hw
        return cv2.resize(self.mask, (width, height), interpolation=cv2.INTER_NEAREST)


def to_rgb(frame: np.ndarray) -> np.ndarray:
    """An OpenCV frame, uint8 gray (H, W) / (H, W, 1), BGR (H, W, 3) or BGRA (H, W, 4) -> (H, W, 3) RGB.

    Any size from 1x1 and any memory layout (views, non-contiguous, read-only) is accepted.
    Everything else raises a one-line FrameError and is never guessed at: other dtypes (16-bit,
    float: 0..1 or 0..255 cannot be told apart, NaN/Inf have no pixel value), empty frames,
    other channel counts or ndim, non-arrays."""
    if not isinstance(frame, np.ndarray):
        raise FrameError(f"expected a frame as a numpy array, got {type(frame).__name__}")
    if frame.dtype != np.uint8:
        raise FrameError(f"expected a uint8 frame, got {frame.dtype} (shape {frame.shape}); "
                         "convert it to uint8 0..255 first (the runtime does not guess a scale)")
    channels = 1 if frame.ndim == 2 else frame.shape[2] if frame.ndim == 3 else None
    if channels not in _TO_RGB:
        raise FrameError(f"expected a gray (H, W), BGR (H, W, 3) or BGRA (H, W, 4) frame, got shape {frame.shape}")
    if frame.size == 0:
        raise FrameError(f"empty frame (shape {frame.shape})")
    return cv2.cvtColor(frame, _TO_RGB[channels])


def preprocess(frame: np.ndarray, input_hw: tuple[int, int]) -> np.ndarray:
    """An OpenCV frame -> the graph's input (1, 3, h, w) float32 RGB 0..255."""
    return to_model_input(to_rgb(frame), input_hw)[None]


def postprocess(outputs: Mapping[str, np.ndarray], frame_hw: tuple[int, int], input_hw: tuple[int, int],
                threshold: float, labels: tuple[str, ...]) -> Result:
    """The graph's outputs for one image ({"detections": (K, 7), "mask": (1, 1, h, w)}; other
    outputs are ignored) -> a Result with scores of at least `threshold`, boxes scaled from
    model-input to frame pixels. Copies what it keeps, so `outputs` may be request buffers."""
    detections = outputs[DETECTIONS]
    detections = detections[(detections[:, 0] == 0) & (detections[:, 2] >= threshold)]
    detections = detections[np.argsort(-detections[:, 2], kind="stable")]
    (frame_h, frame_w), (input_h, input_w) = frame_hw, input_hw
    scale = np.array([frame_w / input_w, frame_h / input_h] * 2, dtype=np.float32)
    boxes = np.clip(detections[:, 3:7] * scale, 0, [frame_w, frame_h, frame_w, frame_h]).astype(np.float32)
    mask = outputs.get(MASK)
    return Result(boxes=boxes, labels=detections[:, 1].astype(np.int64), scores=detections[:, 2].astype(np.float32),
                  classes=tuple(labels), frame_hw=(int(frame_h), int(frame_w)),
                  mask=None if mask is None else mask[0, 0].astype(np.uint8))


def read_ir(xml_path: str | os.PathLike, core: ov.Core) -> ov.Model:
    """The IR at `xml_path` (its .bin beside it), or a one-line ModelError saying what is wrong."""
    path = Path(xml_path)
    weights = path.with_suffix(".bin")
    if path.suffix.lower() != ".xml":
        raise ModelError(f"{path}: expected an OpenVINO IR .xml file (with its .bin beside it)")
    if not path.is_file():
        raise ModelError(f"{path}: no such file")
    if not weights.is_file():
        raise ModelError(f"{weights}: no such file (the weights of {path.name})")
    # Checked first: OpenVINO would otherwise hand a stray .xml to every frontend in turn.
    with path.open("rb") as file:
        if b"<net " not in file.read(4096):
            raise ModelError(f"{path}: not an OpenVINO IR (no <net> element)")
    try:
        # Weights copied, not mmap'ed: a .bin truncated in place under a running app (a copy or
        # an export over it) would otherwise kill the process with SIGBUS at the next inference.
        return core.read_model(str(path), str(weights), {"ENABLE_MMAP": False})
    except RuntimeError as e:
        raise ModelError(f"{path}: unreadable OpenVINO IR ({openvino_message(e)})") from None


def read_model_info(model: ov.Model) -> dict[str, str]:
    """The `model_info` entries of `model` as strings ({} when it has none)."""
    return ir_metadata.read_entries(model)


def parse_model_info(entries: Mapping[str, str], source: str) -> IRMetadata:
    """Checks the format and version and parses every declared key (`ir_metadata.parse`);
    a one-line ModelError naming `source` otherwise."""
    try:
        return ir_metadata.parse(entries)
    except MetadataError as e:
        raise ModelError(f"{source}: {e}") from None


def check_graph(model: ov.Model, info: IRMetadata, source: str) -> None:
    """One image input at the metadata's size and a `detections` output; raw-mode IRs (decoded
    outside the graph) are not supported yet."""
    outputs = {name for port in model.outputs for name in port.get_names()}
    if outputs & set(RAW_OUTPUTS):
        raise ModelError(f"{source}: raw-mode IR (outputs {', '.join(RAW_OUTPUTS)}) is not supported by the "
                         f"runtime yet; export it without raw mode (post-processing in the graph)")
    if DETECTIONS not in outputs:
        raise ModelError(f"{source}: the IR has no {DETECTIONS!r} output (outputs: {', '.join(sorted(outputs))})")
    if len(model.inputs) != 1:
        raise ModelError(f"{source}: expected one image input, the IR has {len(model.inputs)}")
    shape = model.inputs[0].get_partial_shape()
    spatial = [shape[i].get_length() if shape[i].is_static else None for i in (2, 3)] if shape.rank.is_static else []
    if tuple(spatial) != info.input_hw:
        raise ModelError(f"{source}: input shape {shape} does not match model_info size {info.input_hw}")


def compile_config(hint: str, cache_dir: str | os.PathLike | None, extra: Mapping[str, Any] | None) -> dict:
    """Plugin properties: the performance hint, the model cache, then `extra` (which wins)."""
    if hint.upper() not in HINTS:
        raise ValueError(f"unknown performance hint {hint!r}; use one of {', '.join(HINTS)}")
    config: dict[str, Any] = {"PERFORMANCE_HINT": hint.upper()}
    if cache_dir is not None:
        config["CACHE_DIR"] = str(cache_dir)
    return {**config, **(extra or {})}


def binary_safe_properties(model: ov.Model, device: str, properties: Mapping[str, Any]) -> dict:
    """`properties`, plus an f32 inference precision for an IR with BinaryConvolution on CPU when the
    caller chose none: where the CPU plugin runs the real-valued part in bf16 (AVX-512 bf16, AMX), it
    cannot reorder that into a binary conv's u1 input and the INT8 IR of a binarized model fails to
    compile ("unsupported reorder case")."""
    properties = dict(properties)
    binary = any(op.get_type_name() == "BinaryConvolution" for op in model.get_ops())
    if binary and device.upper().startswith("CPU") and "INFERENCE_PRECISION_HINT" not in properties:
        properties["INFERENCE_PRECISION_HINT"] = "f32"
    return properties


def _weak_callback(detector: "Detector") -> Callable[[ov.InferRequest, Any], None]:
    reference = weakref.ref(detector)

    def on_done(request: ov.InferRequest, userdata: Any) -> None:
        owner = reference()
        if owner is not None:
            owner._on_done(request, userdata)
    return on_done


def openvino_message(error: Exception) -> str:
    """The meaningful line of an OpenVINO error (they start with 'Exception from <file>:<line>:' lines)."""
    lines = [line.strip() for line in str(error).splitlines()]
    meaningful = [line for line in lines if line and not line.startswith("Exception from ")]
    return meaningful[-1] if meaningful else str(error).strip()


Callback = Callable[[Any, Result], None]


class Detector:
    """A compiled babo-edge IR: `detector(frame) -> Result`, or asynchronous inference.

    Asynchronous: `infer_async(frame, userdata)` submits a frame to an `openvino.AsyncInferQueue`
    of `num_requests` requests (0: the compiled model's OPTIMAL_NUMBER_OF_INFER_REQUESTS) and
    returns once a request has taken it (it blocks while all are busy). Results are delivered in
    submission order, each with its userdata, whatever order the requests finish in: to
    `callback(userdata, result)` when one was given (called on an OpenVINO thread, under a lock:
    keep it short and do not submit from it), else queued for `results()`. `wait_all()` waits
    for every submitted frame and raises if a post-processing or callback call failed.

    Back-pressure: nothing is ever dropped. A slow callback holds its request (and, through the
    lock, every later one), so `infer_async` blocks once all requests are taken, until the
    callback catches up. Without a callback nothing blocks on the consumer: results wait in
    memory, unbounded, until `results()` reads them (drain it as you go).

    Threads: one Detector may be shared. `infer_async` may be called from several threads
    (submission order is the order in which the calls are accepted; each thread's frames keep
    its own order). Synchronous calls share one request and run one at a time, so they are
    correct from any thread but not parallel: for parallel inference use `infer_async` or one
    Detector per thread. Synchronous calls may be mixed with asynchronous ones.
    """

    def __init__(self, model: str | os.PathLike | ov.Model, device: str = "CPU", *, hint: str = "LATENCY",
                 cache_dir: str | os.PathLike | None = None, num_requests: int = 0,
                 config: Mapping[str, Any] | None = None, score_threshold: float | None = None,
                 callback: Callback | None = None, core: ov.Core | None = None, keep_outputs: bool = False,
                 execution: str = "dense", lean_masks: bool = True):
        """`model`: the .xml path of an IR, or an openvino.Model carrying the same model_info (see
        `from_model`). `config`: extra plugin properties, e.g. {"INFERENCE_PRECISION_HINT": "f32"}.
        `score_threshold`: default the IR's confidence_threshold. `keep_outputs`: results carry
        every output of their request (`Result.outputs`), e.g. for runtime.sparsity counters.
        `execution`: "dense" runs the IR as it is; "roi" runs the OMG first, then nothing on an
        empty mask, else the detector on the foreground's crop (runtime.sparse: same detections);
        "auto" picks per frame, from latencies measured here and the previous frame's crop,
        the one dense graph or OMG first, then ROI or the dense detector ("dense" on a vanilla
        IR). OMG-first frames run in the caller's thread, asynchronous ones too (the crop
        depends on the mask), and keep only the `detections` and `mask` outputs. `lean_masks`:
        the dense graph is compiled without the mask Multiplies that cannot change a detection
        (runtime.lean_masks; the IR and `self.model` keep them); False compiles every one."""
        core = core or ov.Core()
        in_memory = isinstance(model, ov.Model)
        source = f"model {model.get_friendly_name()!r}" if in_memory else str(model)
        self.model = model if in_memory else read_ir(model, core)
        self.info = parse_model_info(read_model_info(self.model), source)
        check_graph(self.model, self.info, source)
        self.device = resolve_device(device, core)
        check_static_for_npu(self.model, self.device)
        properties = binary_safe_properties(self.model, self.device, compile_config(hint, cache_dir, config))
        self._sparse = self._sparse_runner(execution, core, properties, source, lean_masks)
        self.execution = "dense" if self._sparse is None else execution
        compiled_model = self.model
        if lean_masks and self.info.mask_aware:
            compiled_model = self.model.clone()
            drop_pointwise_masks(compiled_model)
        try:
            self.compiled = core.compile_model(compiled_model, self.device, properties)
        except RuntimeError as e:
            raise DeviceError(f"cannot compile {source} for {self.device}: {openvino_message(e)}") from None
        self.score_threshold = self.info.confidence_threshold if score_threshold is None else score_threshold
        self.keep_outputs = keep_outputs
        self._request = self.compiled.create_infer_request()
        self._queue = ov.AsyncInferQueue(self.compiled, num_requests or
                                         self.compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
        # The queue (C++) holds its callback where Python's GC cannot see it: a bound method would keep
        # this Detector, its compiled model and its threads alive after the last user reference.
        self._queue.set_callback(_weak_callback(self))
        self._callback = callback
        self._lock = threading.Lock()
        self._sync_lock = threading.Lock()  # the one synchronous request and the sparse runner
        self._submit_lock = threading.Lock()  # submission index and order
        self._submitted = 0
        self._delivered = 0
        self._finished: dict[int, tuple[Any, Result | None]] = {}  # finished out of order, not yet delivered
        self._ready: deque[tuple[Any, Result]] = deque()
        self._errors: list[Exception] = []

    def _sparse_runner(self, execution: str, core: ov.Core, config: dict, source: str,
                       lean_masks: bool) -> SparseRunner | None:
        """OMG-first execution, or None to run the one dense graph ("dense", or "auto" on a
        vanilla IR: nothing to skip)."""
        if execution not in EXECUTIONS:
            raise ValueError(f"unknown execution {execution!r}; use one of {', '.join(EXECUTIONS)}")
        if execution == "dense" or (execution == "auto" and self.info.mask_input_hw is None):
            return None
        if self.info.mask_input_hw is None:
            raise ModelError(f"{source}: {execution} execution needs a BABO IR (this one has no mask)")
        if not self.info.mask_aware:
            raise ModelError(f"{source}: {execution} execution needs mask-aware post-processing (model_info "
                             f"blacked_out_anchors = background); re-export it with export/to_ir.py")
        try:
            return SparseRunner(self.model, self.input_hw, core, self.device, config, execution, lean_masks=lean_masks)
        except SparseError as e:
            raise ModelError(f"{source}: cannot run {execution}: {e}") from None
        except RuntimeError as e:
            raise DeviceError(f"cannot compile {source} for {self.device}: {openvino_message(e)}") from None

    @classmethod
    def from_model(cls, model: ov.Model, device: str = "CPU", **options) -> Detector:
        """Compiles an in-memory model, e.g. an instrumented copy of a read IR; keyword options
        as the constructor's. Extra outputs are left to the caller (see `run`)."""
        return cls(model, device, **options)

    @property
    def input_hw(self) -> tuple[int, int]:
        return self.info.input_hw

    @property
    def labels(self) -> tuple[str, ...]:
        return self.info.labels

    @property
    def num_requests(self) -> int:
        return len(self._queue)

    def __call__(self, frame: np.ndarray) -> Result:
        inputs = preprocess(frame, self.input_hw)
        if self._sparse is not None:
            return self._sparse_result(inputs, frame.shape[:2])
        return self._postprocess(self.run(inputs), frame.shape[:2])

    def _sparse_result(self, inputs: np.ndarray, frame_hw: tuple[int, int]) -> Result:
        with self._sync_lock:
            outputs, execution, crop = self._sparse.run(inputs)
        result = replace(self._postprocess(outputs, frame_hw), execution=execution)
        if crop is None or execution == "dense":
            return result
        (y0, x0, h, w), (input_h, input_w) = crop, self.input_hw
        sy, sx = frame_hw[0] / input_h, frame_hw[1] / input_w
        return replace(result, roi=(x0 * sx, y0 * sy, (x0 + w) * sx, (y0 + h) * sy))

    def run(self, inputs: np.ndarray) -> dict[str, np.ndarray]:
        """Synchronous inference on a preprocessed input: {output name: array}, every output of
        the model (copies, safe to keep)."""
        with self._sync_lock:
            self._request.infer({0: inputs})
            return self._outputs(self._request)

    def infer_async(self, frame: np.ndarray, userdata: Any = None) -> None:
        """Submits `frame`; a bad frame raises FrameError here, in the caller's thread."""
        inputs = preprocess(frame, self.input_hw)
        with self._submit_lock:
            index, self._submitted = self._submitted, self._submitted + 1
            if self._sparse is None:
                self._queue.start_async({0: inputs}, (index, frame.shape[:2], userdata))
                return
            try:
                result = self._sparse_result(inputs, frame.shape[:2])
            except Exception as e:  # anything: raised by wait_all(), as for asynchronous requests
                result = None
                with self._lock:
                    self._errors.append(e)
            self._finish(index, userdata, result)

    def wait_all(self) -> None:
        self._queue.wait_all()
        with self._lock:
            errors, self._errors = self._errors, []
        if errors:
            raise RuntimeError(f"{len(errors)} asynchronous result(s) failed, first: {errors[0]!r}") from errors[0]

    def results(self) -> Iterator[tuple[Any, Result]]:
        """(userdata, Result) pairs delivered so far (all of them after wait_all()), in submission
        order, each yielded once. Nothing is queued when a callback was given."""
        while True:
            with self._lock:
                if not self._ready:
                    return
                item = self._ready.popleft()
            yield item

    def _postprocess(self, outputs: Mapping[str, np.ndarray], frame_hw: tuple[int, int]) -> Result:
        result = postprocess(outputs, frame_hw, self.input_hw, self.score_threshold, self.labels)
        return replace(result, outputs=outputs) if self.keep_outputs else result

    def _outputs(self, request: ov.InferRequest) -> dict[str, np.ndarray]:
        return {port.get_any_name(): request.get_tensor(port).data.copy() for port in self.compiled.outputs}

    def _on_done(self, request: ov.InferRequest, userdata: tuple[int, tuple[int, int], Any]) -> None:
        """AsyncInferQueue callback (OpenVINO thread): holds the result until all earlier
        submissions are delivered. Errors are kept for wait_all(), not raised into OpenVINO."""
        index, frame_hw, user = userdata
        try:
            result = self._postprocess(self._outputs(request), frame_hw)
        except Exception as e:  # anything: raised by wait_all(), never into OpenVINO
            result = None
            with self._lock:
                self._errors.append(e)
        self._finish(index, user, result)

    def _finish(self, index: int, user: Any, result: Result | None) -> None:
        with self._lock:
            self._finished[index] = (user, result)
            while self._delivered in self._finished:
                self._deliver(*self._finished.pop(self._delivered))
                self._delivered += 1

    def _deliver(self, userdata: Any, result: Result | None) -> None:
        """Called under the lock, in submission order."""
        if result is None:
            return
        if self._callback is None:
            self._ready.append((userdata, result))
            return
        try:
            self._callback(userdata, result)
        except Exception as e:  # anything: raised by wait_all(), never into OpenVINO
            self._errors.append(e)
