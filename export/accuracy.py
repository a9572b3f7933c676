"""Exported models on an annotated split: COCO AP, mask FG-ratio and recall, mask agreement,
zeros% and GMAC*, computed from the runtimes' own outputs (not from PyTorch).

A runner (export.parity) maps one (1, 3, H, W) input to its outputs; every model sees the same
images, so the first model is the reference of the mask agreement (IoU of the masks over all
pixels of the split). `ap_of` is the metric NNCF's accuracy control optimises.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from babo_edge.calibration.coco import CocoDetection
from babo_edge.export.parity import Outputs, Parity, Runner, compare_masks
from babo_edge.ir_metadata import DETECTIONS, MASK
from babo_edge.models.accounting import LayerCount, ReportAccumulator, figures
from babo_edge.models.preprocess import to_model_input
from babo_edge.train.evaluation import coco_detections, coco_metrics, instance_recall, recall_summary

ZeroCounter = Callable[[Outputs], list[LayerCount]]  # per-conv zeros of one image's outputs


@dataclass
class SplitAccuracy:
    """One model on one split. AP figures in percent, ratios in 0..1."""

    metrics: dict[str, float | None]
    fg_ratio: float | None
    instance_recall: dict[str, float | None] | None
    mask_iou: float | None  # against the first model evaluated with it; None for that one
    report: dict | None  # models.accounting report from the runtime's zero counters

    def as_dict(self) -> dict:
        summary = None
        if self.report is not None:
            summary = {**figures(self.report["totals"]),
                       "od_zero_ratio": self.report["networks"]["od"]["totals"]["zero_ratio"]}
        return {"metrics": self.metrics, "fg_ratio": self.fg_ratio, "instance_recall": self.instance_recall,
                "mask_iou": self.mask_iou, "sparsity": summary}


class _ModelTally:
    def __init__(self):
        self.detections: list[dict] = []
        self.fg: list[float] = []
        self.hits: list[np.ndarray] = []
        self.areas: list[np.ndarray] = []
        self.agreement = Parity()  # masks against the reference model's
        self.zeros = ReportAccumulator()


def evaluate_runners(runners: dict[str, Runner], coco: CocoDetection, input_hw: tuple[int, int],
                     indices: Sequence[int] | None = None, zero_counters: dict[str, ZeroCounter] | None = None,
                     progress: bool = True) -> dict[str, SplitAccuracy]:
    """Every runner on the images `indices` of `coco` (default: all). `zero_counters[name]`,
    when given, turns that runner's outputs into per-conv zero counts for the MAC* report."""
    indices = range(len(coco)) if indices is None else indices
    zero_counters = zero_counters or {}
    tallies = {name: _ModelTally() for name in runners}
    reference_name = next(iter(runners))
    image_ids = []
    for index in tqdm(indices, desc="evaluate " + "/".join(runners), unit="img", disable=not progress):
        sample = coco[index]
        image_ids.append(sample.image_id)
        batch = to_model_input(sample.image, input_hw)[None]
        outputs = {name: run(batch) for name, run in runners.items()}
        for name, out in outputs.items():
            tally = tallies[name]
            tally.detections += coco_detections(out[DETECTIONS], [sample.image_id], [sample.image.shape[:2]],
                                                input_hw, coco.category_ids)
            mask = out.get(MASK)
            fg = None
            if mask is not None:
                mask = mask[0, 0] > 0.5
                fg = float(mask.mean())
                tally.fg.append(fg)
                image_hits, image_areas = instance_recall(sample.instance_masks, sample.iscrowd, mask)
                tally.hits.append(image_hits)
                tally.areas.append(image_areas)
                compare_masks(tally.agreement, outputs[reference_name][MASK], out[MASK])
            if name in zero_counters:
                tally.zeros.add(zero_counters[name](out), fg)
    return {name: _result(tally, coco, image_ids, name == reference_name) for name, tally in tallies.items()}


def _result(tally: _ModelTally, coco: CocoDetection, image_ids: list[int], is_reference: bool) -> SplitAccuracy:
    has_mask = bool(tally.fg)
    return SplitAccuracy(
        metrics=coco_metrics(coco, tally.detections, image_ids),
        fg_ratio=float(np.mean(tally.fg)) if has_mask else None,
        instance_recall=recall_summary(np.concatenate(tally.hits), np.concatenate(tally.areas)) if has_mask else None,
        mask_iou=tally.agreement.mask_iou if has_mask and not is_reference else None,
        report=tally.zeros.report({"ann_file": str(coco.ann_file)}) if tally.zeros.images else None)


def ap_of(runner: Runner, coco: CocoDetection, input_hw: tuple[int, int], indices: Sequence[int]) -> float:
    """COCO AP (percent) of one runner on `indices`: the validation metric of accuracy control."""
    result = evaluate_runners({"model": runner}, coco, input_hw, list(indices), progress=False)["model"]
    return result.metrics["AP"] or 0.0
