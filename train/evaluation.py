"""Evaluation of a BABO model on a COCO-format split: the quantities of the paper's tables.

COCO box AP (pycocotools, in percent), the mask's FG-ratio and instance recall@0.5 (paper
Fig. 3 / Table 1), zeros% and GMAC / GMAC* (Eq. 3-4, via models.accounting). One forward pass
per batch gives both the detections and the zero counts (models.profiling.profile).
"""
from __future__ import annotations

import contextlib
import io
import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from tqdm import tqdm

from babo_edge.calibration.coco import SIZE_BUCKETS, CocoDetection, Sample
from babo_edge.calibration.errors import DatasetError
from babo_edge.calibration.synthetic import split_files
from babo_edge.models.accounting import ReportAccumulator, figures
from babo_edge.models.detector import BABODetector
from babo_edge.models.profiling import profile
from babo_edge.train.data import DetectionData, collate
from babo_edge.train.masks import check_source, external_mask

METRIC_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl")  # COCOeval.stats[0:6]
RECALL_THRESHOLD = 0.5  # paper Fig. 3: recalled when more than half of the instance is foreground

DataSpec = str | os.PathLike | tuple[str | os.PathLike, str | os.PathLike] | CocoDetection


# --- COCO box AP ----------------------------------------------------------------------------

def open_dataset(data: DataSpec, split: str = "val") -> CocoDetection:
    """A dataset folder (with instances_<split>.json and images/<split>), an (annotation file,
    images folder) pair, or an already opened CocoDetection."""
    if isinstance(data, CocoDetection):
        return data
    if isinstance(data, tuple):
        return CocoDetection(*data)
    if not Path(data).is_dir():
        raise DatasetError(f"dataset folder {str(data)!r} does not exist")
    return CocoDetection(*split_files(data, split))


def coco_detections(detections: torch.Tensor, image_ids: list[int],
                    original_hws: list[tuple[int, int]], input_hw: tuple[int, int],
                    category_ids: list[int]) -> list[dict]:
    """Detections (K, 7) of a batch in model-input pixels -> COCO result dicts: the dataset's
    category ids and xywh boxes in original image pixels (the input is a plain resize)."""
    results = []
    input_h, input_w = input_hw
    for image, label, score, x1, y1, x2, y2 in detections.tolist():
        original_h, original_w = original_hws[int(image)]
        sx, sy = original_w / input_w, original_h / input_h
        results.append({
            "image_id": image_ids[int(image)],
            "category_id": category_ids[int(label)],
            "bbox": [x1 * sx, y1 * sy, (x2 - x1) * sx, (y2 - y1) * sy],
            "score": score,
        })
    return results


def coco_metrics(ground_truth: str | os.PathLike | CocoDetection, detections: list[dict],
                 image_ids: list[int] | None = None) -> dict[str, float | None]:
    """COCOeval (bbox) AP, AP50, AP75, APs, APm, APl in percent; None where the split has no
    ground truth for a figure (e.g. APs without small objects). `image_ids` restricts the
    evaluation (default: every image of the annotation file), so a partial run is not charged
    with the objects of images it never saw. pycocotools' prints are swallowed."""
    ann_file = ground_truth.ann_file if isinstance(ground_truth, CocoDetection) else ground_truth
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(ann_file))
        dt = gt.loadRes(detections) if detections else _empty_results(gt)
        evaluator = COCOeval(gt, dt, "bbox")
        if image_ids is not None:
            evaluator.params.imgIds = sorted(image_ids)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return {name: None if value < 0 else 100 * float(value)
            for name, value in zip(METRIC_NAMES, evaluator.stats)}


def _empty_results(gt: COCO) -> COCO:
    """A result set without detections (`loadRes` cannot take an empty list): AP is then 0
    wherever there is ground truth."""
    results = COCO()
    results.dataset = {"images": gt.dataset["images"], "categories": gt.dataset["categories"],
                       "annotations": []}
    results.createIndex()
    return results


# --- instance recall of the mask ------------------------------------------------------------

def instance_recall(instance_masks: np.ndarray, iscrowd: np.ndarray, predicted_mask: np.ndarray,
                    threshold: float = RECALL_THRESHOLD) -> tuple[np.ndarray, np.ndarray]:
    """(hit flags, mask areas) of the non-crowd instances of one image.

    instance_masks (N, H, W) are at the original image size, the predicted mask (h, w) at the
    model input size: it is resized to (H, W) with nearest neighbour first. An instance is hit
    when more than `threshold` of its pixels are foreground. Crowd regions and instances
    without pixels are not instances to recall.
    """
    height, width = instance_masks.shape[1:]
    predicted = np.asarray(predicted_mask, dtype=np.uint8)
    if predicted.shape != (height, width):
        predicted = cv2.resize(predicted, (width, height), interpolation=cv2.INTER_NEAREST)
    flat = instance_masks.reshape(len(instance_masks), height * width).astype(bool)
    areas = flat.sum(axis=1).astype(np.float64)
    covered = (flat & predicted.reshape(1, height * width).astype(bool)).sum(axis=1)
    counted = ~np.asarray(iscrowd, dtype=bool) & (areas > 0)
    return covered[counted] > threshold * areas[counted], areas[counted]


def recall_summary(hits: np.ndarray, areas: np.ndarray) -> dict[str, float | None]:
    """Recall overall and per COCO size bucket (by mask area); None for an empty bucket."""
    hits, areas = np.asarray(hits, dtype=bool), np.asarray(areas, dtype=np.float64)
    bucket = np.searchsorted(list(SIZE_BUCKETS.values()), areas, side="right")
    groups = {"overall": np.ones_like(hits)} | {name: bucket == i for i, name in enumerate(SIZE_BUCKETS)}
    return {name: float(hits[members].mean()) if members.any() else None
            for name, members in groups.items()}


# --- end-to-end evaluation -------------------------------------------------------------------

@dataclass
class EvalResult:
    """One model on one split. Ratios are fractions in 0..1; AP figures are percent."""

    metrics: dict[str, float | None]  # METRIC_NAMES
    mask_source: str
    fg_ratio: float | None  # mean mask FG-ratio; None when the model runs without a mask
    instance_recall: dict[str, float | None] | None  # overall / small / medium / large
    zero_ratio: float  # zeros at conv inputs, OMG + OD
    gmac: float  # OMG + OD, Eq. 3
    gmac_star: float  # OMG + OD, Eq. 4 averaged over the images
    gmac_star_w: float | None  # OMG + OD, MAC* that also skips zero weights (models.accounting)
    networks: dict[str, dict[str, float]]  # per network: gmac, gmac_star, zero_ratio
    images: int
    report: dict  # the full models.accounting report


def resolve_mask_source(model: BABODetector, source: str | None) -> str:
    """None means the model's own mask: its OMG, or none for a vanilla model. A ValueError
    for a source the model cannot use, raised before any image is read."""
    if source is None:
        return "omg" if model.omg is not None else "none"
    check_source(source)
    if source == "omg" and model.omg is None:
        raise ValueError("mask source 'omg' needs a model with an OMG; this one has none")
    return source


def check_classes(model: BABODetector, coco: CocoDetection, class_names: list[str] | None = None) -> None:
    """Labels index the dataset's categories, so a model for other classes gives meaningless AP."""
    if model.detector.num_classes != len(coco.category_ids):
        raise ValueError(f"the model predicts {model.detector.num_classes} classes, "
                         f"{coco.ann_file} has {len(coco.category_ids)} categories")
    if class_names is not None and list(class_names) != coco.class_names:
        raise ValueError(f"the model's classes {list(class_names)} are not the categories "
                         f"{coco.class_names} of {coco.ann_file}")


class _InstanceKeeper:
    """The CocoDetection as DetectionData sees it, keeping each sample's instance masks for the
    recall so that every image is decoded once."""

    def __init__(self, coco: CocoDetection):
        self.coco = coco
        self.kept: dict[int, Sample] = {}

    def __len__(self) -> int:
        return len(self.coco)

    def __getitem__(self, index: int) -> Sample:
        self.kept[index] = self.coco[index]
        return self.kept[index]


def evaluate(model: BABODetector, data: DataSpec, *, input_size: tuple[int, int], split: str = "val",
             mask_source: str | None = None, class_names: list[str] | None = None, batch_size: int = 8,
             limit: int | None = None, progress: bool = True) -> EvalResult:
    """Runs `model` (in eval mode, restored afterwards) over the first `limit` images of the split.

    input_size: the model's (height, width), from its ModelConfig. mask_source: see
    train.masks; None = the model's own (OMG, or none without one). class_names, when given,
    must be the dataset's categories.
    """
    coco = open_dataset(data, split)
    source = resolve_mask_source(model, mask_source)
    check_classes(model, coco, class_names)
    count = len(coco) if limit is None else min(limit, len(coco))
    if count < 1:
        raise DatasetError(f"{coco.ann_file}: no image to evaluate")
    input_hw = (int(input_size[0]), int(input_size[1]))
    keeper = _InstanceKeeper(coco)
    items = DetectionData(keeper, input_hw, train=False)
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(0)  # reproducible random:<ratio> masks
    accumulator = ReportAccumulator()
    detections, image_ids, hits, areas = [], [], [], []
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), tqdm(total=count, desc="evaluate", unit="img", disable=not progress) as bar:
            for start in range(0, count, batch_size):
                batch = collate([items[i] for i in range(start, min(start + batch_size, count))])
                mask = external_mask(source, batch, model, generator)
                run = profile(model, batch.images.to(device), None if mask is None else mask.to(device))
                out = run.output
                boxes = model.decode(out, input_hw)
                detections += coco_detections(boxes.cpu(), batch.image_ids, batch.original_hw,
                                              input_hw, coco.category_ids)
                image_ids += batch.image_ids
                for counts, fg in zip(run.counts, run.fg_ratios):
                    accumulator.add(counts, fg)
                for i, index in enumerate(batch.indices):
                    sample = keeper.kept.pop(index)
                    if out.mask is not None:
                        image_hits, image_areas = instance_recall(
                            sample.instance_masks, sample.iscrowd, out.mask[i, 0].cpu().numpy())
                        hits.append(image_hits)
                        areas.append(image_areas)
                bar.update(len(batch))
    finally:
        model.train(was_training)
    report = accumulator.report({"ann_file": str(coco.ann_file), "mask_source": source})
    recall = recall_summary(np.concatenate(hits), np.concatenate(areas)) if hits else None
    return EvalResult(metrics=coco_metrics(coco, detections, image_ids), mask_source=source,
                      fg_ratio=report["fg_ratio"], instance_recall=recall, **figures(report["totals"]),
                      gmac_star_w=report["totals"]["mac_star_w"] / 1e9,
                      networks={net: figures(section["totals"]) for net, section in report["networks"].items()},
                      images=count, report=report)


# --- the table ---------------------------------------------------------------------------------

TABLE_COLUMNS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "FG-ratio%", "recall@0.5%",
                 "OD zeros%", "GMAC", "GMAC*")


def format_table(rows: list[tuple[str, EvalResult]]) -> str:
    """One line per model, paper-style. zeros% is the detector's, as in the paper's Table 2
    and Fig. 5; GMAC and GMAC* are OMG + OD as in Table 4; '-' marks what does not apply."""
    def percent(value: float | None, digits: int = 1) -> str:
        return "-" if value is None else f"{100 * value:.{digits}f}"

    def cells(result: EvalResult) -> list[str]:
        recall = None if result.instance_recall is None else result.instance_recall["overall"]
        return ([("-" if result.metrics[m] is None else f"{result.metrics[m]:.1f}") for m in METRIC_NAMES]
                + [percent(result.fg_ratio), percent(recall),
                   percent(result.networks["od"]["zero_ratio"], 2),
                   f"{result.gmac:.3f}", f"{result.gmac_star:.3f}"])

    name_width = max([len("model")] + [len(name) for name, _ in rows])
    widths = [max(len(c), 5) for c in TABLE_COLUMNS]

    def line(first: str, values) -> str:
        return " ".join([first.ljust(name_width)] + [v.rjust(w) for v, w in zip(values, widths)])

    header = line("model", TABLE_COLUMNS)
    return "\n".join([header, "-" * len(header)] + [line(name, cells(result)) for name, result in rows])
