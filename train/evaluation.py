"""Evaluation of a BABO model on a COCO-format split: the quantities of the paper's tables.

COCO box AP (pycocotools, in percent), the mask's FG-ratio and instance recall@0.5 (paper
Fig. 3 / Table 1), zeros% and GMAC / GMAC* (Eq. 3-4, via models.accounting), all from one loop,
`evaluate_runners`, whatever runs the model: a runner maps a few samples to their detections,
masks and zero counts (`pytorch_runner` here: one forward pass gives all three through
models.profiling; the exported IRs' runners are in export.accuracy).
"""
from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Callable, Sequence
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
from babo_edge.models.accounting import LayerCount, ReportAccumulator, figures
from babo_edge.models.detector import BABODetector
from babo_edge.models.profiling import profile
from babo_edge.train.data import eval_batch
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


def coco_detections(detections: np.ndarray, image_id: int, original_hw: tuple[int, int],
                    input_hw: tuple[int, int], category_ids: list[int]) -> list[dict]:
    """Detections (K, 6: label, score, x1, y1, x2, y2) of one image in model-input pixels -> COCO
    result dicts: the dataset's category ids and xywh boxes in original image pixels (the input
    is a plain resize)."""
    (original_h, original_w), (input_h, input_w) = original_hw, input_hw
    sx, sy = original_w / input_w, original_h / input_h
    return [{"image_id": image_id, "category_id": category_ids[int(label)],
             "bbox": [x1 * sx, y1 * sy, (x2 - x1) * sx, (y2 - y1) * sy], "score": score}
            for label, score, x1, y1, x2, y2 in np.asarray(detections, dtype=np.float64).tolist()]


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


# --- checks before the first image ------------------------------------------------------------

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


# --- one evaluator loop for every runtime --------------------------------------------------------

EVALUATION_SCHEMA = "babo-edge/evaluation"
EVALUATION_VERSION = 1


@dataclass
class ImageResult:
    """What a runner gives for one image."""

    detections: np.ndarray  # (K, 6): label, score, x1, y1, x2, y2 in model-input pixels
    mask: np.ndarray | None  # (h, w) bool at the model input size; None for a model without a mask
    counts: list[LayerCount] | None = None  # per-conv zero counts (MAC* report); None: not counted


BatchRunner = Callable[[list[Sample]], list[ImageResult]]  # a model, in any runtime, on a few samples


@dataclass
class EvaluationReport:
    """One model on one split; `asdict` of it is the JSON. AP figures in percent, ratios in 0..1,
    None where a figure does not apply (no mask, zeros not counted, no ground truth)."""

    ann_file: str
    images: int
    metrics: dict[str, float | None]  # METRIC_NAMES
    mask_source: str | None  # train.masks source; None for an exported model (its own mask or none)
    fg_ratio: float | None  # mean mask FG-ratio
    instance_recall: dict[str, float | None] | None  # overall / small / medium / large
    mask_iou: float | None  # over the split's pixels, against the first model of the same run
    zero_ratio: float | None  # zeros at conv inputs, OMG + OD
    od_zero_ratio: float | None  # the detector's alone (paper Table 2, Fig. 5)
    gmac: float | None  # OMG + OD, Eq. 3
    gmac_star: float | None  # OMG + OD, Eq. 4 averaged over the images
    gmac_star_w: float | None  # OMG + OD, MAC* that also skips zero weights (models.accounting; PyTorch only)
    networks: dict[str, dict[str, float]] | None  # per network: gmac, gmac_star, zero_ratio
    mac_report: dict | None  # the full models.accounting report
    schema: str = EVALUATION_SCHEMA
    version: int = EVALUATION_VERSION


class _Tally:
    """One runner's running figures over the split."""

    def __init__(self):
        self.detections: list[dict] = []
        self.fg: list[float] = []
        self.hits: list[np.ndarray] = []
        self.areas: list[np.ndarray] = []
        self.intersection = 0
        self.union = 0
        self.zeros = ReportAccumulator()

    def add(self, sample: Sample, result: ImageResult, reference: ImageResult, coco: CocoDetection,
            input_hw: tuple[int, int]) -> None:
        self.detections += coco_detections(result.detections, sample.image_id, sample.image.shape[:2], input_hw,
                                           coco.category_ids)
        fg = None
        if result.mask is not None:
            fg = float(result.mask.mean())
            self.fg.append(fg)
            image_hits, image_areas = instance_recall(sample.instance_masks, sample.iscrowd, result.mask)
            self.hits.append(image_hits)
            self.areas.append(image_areas)
            if reference.mask is not None:
                self.intersection += int((reference.mask & result.mask).sum())
                self.union += int((reference.mask | result.mask).sum())
        if result.counts is not None:
            self.zeros.add(result.counts, fg)

    def report(self, coco: CocoDetection, image_ids: list[int], mask_source: str | None,
               is_reference: bool) -> EvaluationReport:
        has_mask = bool(self.fg)
        mac = self.zeros.report({"ann_file": str(coco.ann_file), "mask_source": mask_source}) \
            if self.zeros.images else None
        sparsity = dict.fromkeys(("gmac", "gmac_star", "zero_ratio"))
        if mac is not None:
            sparsity = figures(mac["totals"])
        return EvaluationReport(
            ann_file=str(coco.ann_file), images=len(image_ids), metrics=coco_metrics(coco, self.detections, image_ids),
            mask_source=mask_source, fg_ratio=float(np.mean(self.fg)) if has_mask else None,
            instance_recall=recall_summary(np.concatenate(self.hits), np.concatenate(self.areas)) if has_mask else None,
            mask_iou=None if is_reference or not has_mask else (self.intersection / self.union if self.union else 1.0),
            od_zero_ratio=None if mac is None else mac["networks"]["od"]["totals"]["zero_ratio"],
            gmac_star_w=None if mac is None or mac["totals"]["mac_star_w"] is None else mac["totals"]["mac_star_w"] / 1e9,
            networks=None if mac is None else {net: figures(section["totals"])
                                               for net, section in mac["networks"].items()},
            mac_report=mac, **sparsity)


def evaluate_runners(runners: dict[str, BatchRunner], coco: CocoDetection, input_hw: tuple[int, int], *,
                     indices: Sequence[int] | None = None, batch_size: int = 1,
                     mask_sources: dict[str, str | None] | None = None,
                     progress: bool = True) -> dict[str, EvaluationReport]:
    """Every runner on the images `indices` of `coco` (default: all), `batch_size` samples per
    call; each image is decoded once for all of them. The first runner is the reference of the
    others' mask IoU. `mask_sources` names each runner's mask in its report."""
    indices = list(range(len(coco)) if indices is None else indices)
    if not indices:
        raise DatasetError(f"{coco.ann_file}: no image to evaluate")
    tallies = {name: _Tally() for name in runners}
    reference_name = next(iter(runners))
    image_ids: list[int] = []
    with tqdm(total=len(indices), desc="evaluate " + "/".join(runners), unit="img", disable=not progress) as bar:
        for start in range(0, len(indices), batch_size):
            samples = [coco[i] for i in indices[start:start + batch_size]]
            results = {name: run(samples) for name, run in runners.items()}
            for i, sample in enumerate(samples):
                image_ids.append(sample.image_id)
                for name, result in results.items():
                    tallies[name].add(sample, result[i], results[reference_name][i], coco, input_hw)
            bar.update(len(samples))
    mask_sources = mask_sources or {}
    return {name: tally.report(coco, image_ids, mask_sources.get(name), name == reference_name)
            for name, tally in tallies.items()}


def pytorch_runner(model: BABODetector, input_hw: tuple[int, int], mask_source: str) -> BatchRunner:
    """`model` (in eval mode: the caller's business) in PyTorch, with the mask of `mask_source`
    (train.masks) and the zero counts of models.profiling; random masks are reproducible."""
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(0)

    def run(samples: list[Sample]) -> list[ImageResult]:
        batch = eval_batch(samples, input_hw)
        mask = external_mask(mask_source, batch, model, generator)
        with torch.no_grad():
            profiled = profile(model, batch.images.to(device), None if mask is None else mask.to(device))
            detections = model.decode(profiled.output, input_hw).cpu().numpy()
        masks = profiled.output.mask
        return [ImageResult(detections[detections[:, 0] == i, 1:],
                            None if masks is None else masks[i, 0].cpu().numpy() > 0.5, profiled.counts[i])
                for i in range(len(samples))]
    return run


def evaluate(model: BABODetector, data: DataSpec, *, input_size: tuple[int, int], split: str = "val",
             mask_source: str | None = None, class_names: list[str] | None = None, batch_size: int = 8,
             limit: int | None = None, progress: bool = True) -> EvaluationReport:
    """Runs `model` (in eval mode, restored afterwards) over the first `limit` images of the split.

    input_size: the model's (height, width), from its ModelConfig. mask_source: see
    train.masks; None = the model's own (OMG, or none without one). class_names, when given,
    must be the dataset's categories.
    """
    coco = open_dataset(data, split)
    source = resolve_mask_source(model, mask_source)
    check_classes(model, coco, class_names)
    count = len(coco) if limit is None else min(limit, len(coco))
    input_hw = (int(input_size[0]), int(input_size[1]))
    was_training = model.training
    model.eval()
    try:
        return evaluate_runners({"model": pytorch_runner(model, input_hw, source)}, coco, input_hw,
                                indices=range(count), batch_size=batch_size, mask_sources={"model": source},
                                progress=progress)["model"]
    finally:
        model.train(was_training)


# --- the table ---------------------------------------------------------------------------------

TABLE_COLUMNS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "FG-ratio%", "recall@0.5%",
                 "OD zeros%", "GMAC", "GMAC*")


def format_table(rows: list[tuple[str, EvaluationReport]]) -> str:
    """One line per model, paper-style. zeros% is the detector's, as in the paper's Table 2
    and Fig. 5; GMAC and GMAC* are OMG + OD as in Table 4; '-' marks what does not apply."""
    def percent(value: float | None, digits: int = 1) -> str:
        return "-" if value is None else f"{100 * value:.{digits}f}"

    def cells(result: EvaluationReport) -> list[str]:
        recall = None if result.instance_recall is None else result.instance_recall["overall"]
        return ([("-" if result.metrics[m] is None else f"{result.metrics[m]:.1f}") for m in METRIC_NAMES]
                + [percent(result.fg_ratio), percent(recall),
                   percent(result.od_zero_ratio, 2),
                   f"{result.gmac:.3f}", f"{result.gmac_star:.3f}"])

    name_width = max([len("model")] + [len(name) for name, _ in rows])
    widths = [max(len(c), 5) for c in TABLE_COLUMNS]

    def line(first: str, values) -> str:
        return " ".join([first.ljust(name_width)] + [v.rjust(w) for v, w in zip(values, widths)])

    header = line("model", TABLE_COLUMNS)
    return "\n".join([header, "-" * len(header)] + [line(name, cells(result)) for name, result in rows])
