"""COCO-format data as training/evaluation batches (tensors at the model's input size)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from babo_edge.calibration.coco import CocoDetection, Sample, box_mask_of, instance_mask
from babo_edge.train.augment import Example, resize, ssd_augment
from babo_edge.models.builders import IMAGENET_MEAN


@dataclass
class Batch:
    images: torch.Tensor  # (N, 3, H, W) float32 RGB 0..255 at the input size
    boxes: list[torch.Tensor]  # (n_i, 4) xyxy input pixels, crowd objects excluded
    labels: list[torch.Tensor]  # (n_i,) int64
    instance_masks: torch.Tensor  # (N, 1, H, W) float 0/1: union of instance masks (crowd included)
    box_masks: torch.Tensor  # (N, 1, H, W) float 0/1: union of the (augmented) boxes
    indices: list[int]  # dataset indices
    image_ids: list[int]
    original_hw: list[tuple[int, int]]

    def __len__(self) -> int:
        return self.images.shape[0]


class DetectionData(torch.utils.data.Dataset):
    """Wraps a CocoDetection: SSD augmentation when `train`, plain resize otherwise.

    Augmentation randomness is seeded by (seed, epoch, index), so a run is reproducible
    whatever the number of loader workers or processes.
    """

    def __init__(self, coco: CocoDetection, input_hw: tuple[int, int], train: bool,
                 mean: tuple[float, float, float] = IMAGENET_MEAN, seed: int = 0):
        self.coco = coco
        self.input_hw = tuple(input_hw)
        self.train = train
        self.mean = mean
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.coco)

    def __getitem__(self, index: int) -> dict:
        rng = np.random.default_rng((self.seed, self.epoch, index)) if self.train else None
        return to_item(self.coco[index], index, self.input_hw, rng, self.mean)


def to_item(sample: Sample, index: int, input_hw: tuple[int, int], rng: np.random.Generator | None = None,
            mean: tuple[float, float, float] = IMAGENET_MEAN) -> dict:
    """One sample as tensors at the input size: SSD-augmented with `rng`, plainly resized without."""
    keep = ~sample.iscrowd
    ex = Example(sample.image, sample.boxes[keep], sample.labels[keep], instance_mask(sample))
    ex = resize(ex, input_hw) if rng is None else ssd_augment(ex, rng, input_hw, mean)
    return {
        "image": torch.from_numpy(np.ascontiguousarray(ex.image.transpose(2, 0, 1))).float(),
        "boxes": torch.from_numpy(ex.boxes).float().reshape(-1, 4),
        "labels": torch.from_numpy(ex.labels).long(),
        "instance_mask": torch.from_numpy(ex.mask).float()[None],
        "box_mask": torch.from_numpy(box_mask_of(ex.boxes, input_hw)).float()[None],
        "index": index,
        "image_id": sample.image_id,
        "original_hw": sample.image.shape[:2],
    }


def eval_batch(samples: list[Sample], input_hw: tuple[int, int]) -> Batch:
    """Samples already read, as one evaluation batch (plain resize); indices are their positions."""
    return collate([to_item(sample, i, input_hw) for i, sample in enumerate(samples)])


def collate(items: list[dict]) -> Batch:
    return Batch(
        images=torch.stack([i["image"] for i in items]),
        boxes=[i["boxes"] for i in items],
        labels=[i["labels"] for i in items],
        instance_masks=torch.stack([i["instance_mask"] for i in items]),
        box_masks=torch.stack([i["box_mask"] for i in items]),
        indices=[i["index"] for i in items],
        image_ids=[i["image_id"] for i in items],
        original_hw=[tuple(i["original_hw"]) for i in items],
    )
