"""Does an exported model compute what the PyTorch model computes? Same images, both outputs.

A runner maps one (1, 3, H, W) float32 batch to {output name: array}; runners exist for the
PyTorch model (through the very ExportGraph that was exported), onnxruntime and OpenVINO.
Images are run one at a time so graphs with a static batch of 1 compare too.

Detections are compared per image and label: each reference detection is paired with the
remaining candidate detection of its label whose box is closest, if within BOX_MATCH_PX. Blacked-out
background gives many anchors bit-identical scores, and runtimes break such ties differently
at the top-k and NMS cut-offs (both choices are right), so a reference detection left without
a partner counts as `unmatched_tied` when another reference detection of its image and label
has the same score, and as `unmatched` (a real difference) otherwise. Masks are compared pixel
by pixel.

A binarized model's sign inputs may lie within float rounding of 0, where either sign is right,
and a deep binary network turns one such tie into different detections. Its IRs are therefore
compared with their signs forced (`sign_forced_runners`): the PyTorch model's binary convs read
the IR's sign inputs instead of their own, so both take the same signs, and each layer's sign
inputs are compared on their own (relative to the tensor's largest magnitude).
"""
from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass

import numpy as np
import torch

from babo_edge.export.mask_graph import sign_inputs
from babo_edge.export.onnx_export import INPUT_NAME, ExportGraph
from babo_edge.ir_metadata import BOX_DELTAS, CLS_LOGITS, DETECTIONS, MASK
from babo_edge.models.binary import binary_convs
from babo_edge.models.blackout import MaskPyramid
from babo_edge.models.detector import BABODetector, BABOOutput

Outputs = dict[str, np.ndarray]
BOX_MATCH_PX = 0.5
SCORE_TIE = 1e-6
SIGN_INPUT = "sign_input:"  # + k: what the k-th binary sign reads, in a sign-forced comparison
Runner = Callable[[np.ndarray], Outputs]


def torch_runner(model: BABODetector, raw: bool = False) -> Runner:
    graph = ExportGraph(model, raw=raw)

    def run(images: np.ndarray) -> Outputs:
        with torch.no_grad():
            values = graph(torch.from_numpy(images))
        return {name: value.numpy() for name, value in zip(graph.output_names, values)}
    return run


def decoding_runner(runner: Runner, model: BABODetector, input_hw: tuple[int, int]) -> Runner:
    """A raw-output runner (cls_logits, box_deltas, mask) turned into a `detections` runner by
    the package's own post-processing on the host, as a client without NMS in the graph would
    (mask-aware: the anchors the mask blacks out score 0)."""
    with torch.no_grad():
        _, _, anchors, feature_hws = model.detector(model.normalize(torch.zeros(1, 3, *input_hw)))

    def run(images: np.ndarray) -> Outputs:
        outputs = runner(images)
        mask = outputs.get(MASK)
        alive = None if mask is None else MaskPyramid(torch.from_numpy(mask)).anchor_alive(
            feature_hws, model.detector.anchors_per_location)
        raw = BABOOutput(torch.from_numpy(outputs[CLS_LOGITS]), torch.from_numpy(outputs[BOX_DELTAS]),
                         anchors, None, None, alive)
        with torch.no_grad():
            detections = model.decode(raw, input_hw)
        return {**outputs, DETECTIONS: detections.numpy()}
    return run


def sign_forced_runners(model: BABODetector, ov_model, compile_model: Callable, raw: bool = False
                        ) -> tuple[Runner, Runner]:
    """(reference, candidate) for a binarized model: the candidate is `ov_model` (an
    openvino.Model, compiled by `compile_model`) also returning what each binary sign reads
    (SIGN_INPUT + k); the reference is the PyTorch model whose binary convs read the candidate's
    values instead of their own, and it returns its own values under the same names."""
    instrumented = ov_model.clone()
    exposed = instrumented.add_outputs(sign_inputs(instrumented))
    convs = [conv for _, conv in binary_convs(model)]
    if len(exposed) != len(convs):
        raise ValueError(f"the IR has {len(exposed)} binary signs, the model {len(convs)} binary convs")
    compiled = compile_model(instrumented)
    outputs = [(output.get_any_name(), output) for output in compiled.outputs[:-len(exposed)]]
    signs = compiled.outputs[-len(exposed):]

    latest: list = []  # [images, outputs]: the reference and then compare() ask for the same image

    def candidate(images: np.ndarray) -> Outputs:
        if latest and np.array_equal(latest[0], images):
            return latest[1]
        results = compiled(images)
        found = {name: results[output] for name, output in outputs} | {
            f"{SIGN_INPUT}{k}": results[output] for k, output in enumerate(signs)}
        latest[:] = [images.copy(), found]
        return found

    eager = torch_runner(model, raw)

    def reference(images: np.ndarray) -> Outputs:
        forced = candidate(images)
        own: list[np.ndarray] = []

        def read_forced(conv, args):
            value = forced[f"{SIGN_INPUT}{len(own)}"]
            if tuple(args[0].shape) != value.shape:
                raise ValueError(f"binary conv {len(own)} reads {tuple(args[0].shape)}, the IR's sign {value.shape}")
            own.append(args[0].numpy().copy())
            return (torch.from_numpy(value),)

        handles = [conv.register_forward_pre_hook(read_forced) for conv in convs]
        try:
            results = eager(images)
        finally:
            for handle in handles:
                handle.remove()
        return results | {f"{SIGN_INPUT}{k}": value for k, value in enumerate(own)}
    return reference, candidate


def onnxruntime_runner(onnx_path: str | os.PathLike) -> Runner:
    import onnxruntime as ort
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    names = [output.name for output in session.get_outputs()]

    def run(images: np.ndarray) -> Outputs:
        return dict(zip(names, session.run(None, {INPUT_NAME: images})))
    return run


def openvino_runner(compiled) -> Runner:
    """`compiled`: an openvino.CompiledModel."""
    def run(images: np.ndarray) -> Outputs:
        results = compiled(images)
        return {output.get_any_name(): results[output] for output in compiled.outputs}
    return run


@dataclass(frozen=True)
class Tolerance:
    score: float
    box_px: float
    # Pixels whose two upsampled OMG logits are equal to rounding may flip their argmax.
    mask_fraction: float
    same_detections: bool = True  # same count, and every untied detection has its counterpart
    sign_input: float = np.inf  # binary sign inputs, relative to their tensor's largest magnitude


# Same float32 graph on another runtime: only summation order differs.
FP32_TOLERANCE = Tolerance(score=1e-4, box_px=1e-2, mask_fraction=1e-4, sign_input=1e-5)
# FP16 / INT8: differences are expected and reported; only an exactly binary mask is required.
BINARY_MASK_ONLY = Tolerance(score=np.inf, box_px=np.inf, mask_fraction=1.0, same_detections=False)


@dataclass
class Parity:
    images: int = 0
    reference_detections: int = 0
    candidate_detections: int = 0
    matched: int = 0
    unmatched_tied: int = 0  # tie broken the other way: another detection has the same score
    unmatched: int = 0
    max_score_diff: float = 0.0  # over matched pairs
    max_box_diff: float = 0.0  # over matched pairs, input pixels
    mask_pixels: int = 0
    mask_mismatches: int = 0
    mask_intersection: int = 0
    mask_union: int = 0
    mask_non_binary: int = 0  # candidate mask values other than 0 and 1
    sign_inputs: int = 0  # values binary signs read (sign-forced comparisons only)
    sign_flips: int = 0  # of them, values to which the candidate gives the other sign
    max_sign_input_diff: float = 0.0  # relative to the largest magnitude of the tensor

    @property
    def mask_iou(self) -> float:
        return self.mask_intersection / self.mask_union if self.mask_union else 1.0

    def as_dict(self) -> dict:
        return {**asdict(self), "mask_iou": self.mask_iou}

    def violations(self, tolerance: Tolerance) -> list[str]:
        """What exceeds `tolerance`, one phrase each; empty when the candidate is equivalent."""
        checks = [
            (tolerance.same_detections and self.candidate_detections != self.reference_detections,
             f"{self.candidate_detections} detections instead of {self.reference_detections}"),
            (tolerance.same_detections and self.unmatched > 0, f"{self.unmatched} detections without a counterpart"),
            (self.max_score_diff > tolerance.score, f"score differs by {self.max_score_diff:.3g}"),
            (self.max_box_diff > tolerance.box_px, f"box differs by {self.max_box_diff:.3g} px"),
            (self.mask_mismatches > tolerance.mask_fraction * self.mask_pixels,
             f"{self.mask_mismatches} of {self.mask_pixels} mask pixels differ"),
            (self.mask_non_binary > 0, f"{self.mask_non_binary} mask values are neither 0 nor 1"),
            (self.max_sign_input_diff > tolerance.sign_input,
             f"binary sign inputs differ by {self.max_sign_input_diff:.3g} (relative)"),
        ]
        return [message for failed, message in checks if failed]


def compare(reference: Runner, candidate: Runner, images: Iterable[np.ndarray]) -> Parity:
    """Runs both on every (3, H, W) or (1, 3, H, W) image and accumulates their differences."""
    parity = Parity()
    for image in images:
        batch = np.ascontiguousarray(image.reshape(1, *image.shape[-3:]), dtype=np.float32)
        expected, actual = reference(batch), candidate(batch)
        parity.images += 1
        _compare_detections(parity, expected[DETECTIONS], actual[DETECTIONS])
        if MASK in expected:
            compare_masks(parity, expected[MASK], actual[MASK])
        for name in expected:
            if name.startswith(SIGN_INPUT):
                _compare_sign_inputs(parity, expected[name], actual[name])
    return parity


def _compare_sign_inputs(parity: Parity, expected: np.ndarray, actual: np.ndarray) -> None:
    parity.sign_inputs += expected.size
    parity.sign_flips += int(((expected > 0) != (actual > 0)).sum())
    scale = max(float(np.abs(expected).max()), np.finfo(np.float32).tiny)
    parity.max_sign_input_diff = max(parity.max_sign_input_diff, float(np.abs(expected - actual).max()) / scale)


def _compare_detections(parity: Parity, expected: np.ndarray, actual: np.ndarray) -> None:
    parity.reference_detections += len(expected)
    parity.candidate_detections += len(actual)
    for label in np.unique(expected[:, 1]):
        of_label = expected[expected[:, 1] == label]
        remaining = actual[actual[:, 1] == label]
        for row in of_label:
            box_diffs = np.abs(remaining[:, 3:7] - row[3:7]).max(axis=1)
            if len(box_diffs) and box_diffs.min() <= BOX_MATCH_PX:
                best = int(np.argmin(box_diffs))
                parity.matched += 1
                parity.max_box_diff = max(parity.max_box_diff, float(box_diffs[best]))
                parity.max_score_diff = max(parity.max_score_diff, float(abs(remaining[best, 2] - row[2])))
                remaining = np.delete(remaining, best, axis=0)
            elif np.count_nonzero(np.abs(of_label[:, 2] - row[2]) <= SCORE_TIE) > 1:
                parity.unmatched_tied += 1
            else:
                parity.unmatched += 1


def compare_masks(parity: Parity, expected: np.ndarray, actual: np.ndarray) -> None:
    """Adds one pair of masks (any shape, values 0/1) to `parity`'s mask figures."""
    parity.mask_non_binary += int((~np.isin(actual, (0, 1))).sum())
    expected, actual = expected > 0.5, actual > 0.5
    parity.mask_pixels += expected.size
    parity.mask_mismatches += int((expected != actual).sum())
    parity.mask_intersection += int((expected & actual).sum())
    parity.mask_union += int((expected | actual).sum())
