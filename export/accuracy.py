"""Exported models as runners of the one evaluator loop (train.evaluation.evaluate_runners):
COCO AP, mask FG-ratio and recall, mask agreement, zeros% and GMAC* computed from the runtimes'
own outputs, not from PyTorch. `ap_of` is the metric NNCF's accuracy control optimises.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

from babo_edge.calibration.coco import CocoDetection, Sample
from babo_edge.export.parity import Outputs, Runner
from babo_edge.ir_metadata import DETECTIONS, MASK
from babo_edge.models.accounting import LayerCount
from babo_edge.models.preprocess import to_model_input
from babo_edge.train.evaluation import BatchRunner, ImageResult, evaluate_runners

ZeroCounter = Callable[[Outputs], list[LayerCount]]  # per-conv zeros of one image's outputs


def outputs_runner(runner: Runner, input_hw: tuple[int, int], zero_counter: ZeroCounter | None = None) -> BatchRunner:
    """An export.parity runner (one (1, 3, H, W) image -> its named outputs) as an evaluator
    runner; `zero_counter`, when given, turns its outputs into the MAC* report's zero counts."""
    def run(samples: list[Sample]) -> list[ImageResult]:
        results = []
        for sample in samples:
            out = runner(to_model_input(sample.image, input_hw)[None])
            mask = out.get(MASK)
            results.append(ImageResult(out[DETECTIONS][:, 1:], None if mask is None else mask[0, 0] > 0.5,
                                       None if zero_counter is None else zero_counter(out)))
        return results
    return run


def ap_of(runner: Runner, coco: CocoDetection, input_hw: tuple[int, int], indices: Sequence[int]) -> float:
    """COCO AP (percent) of one runner on `indices`: the validation metric of accuracy control."""
    result = evaluate_runners({"model": outputs_runner(runner, input_hw)}, coco, input_hw, indices=indices,
                              progress=False)["model"]
    return result.metrics["AP"] or 0.0
