"""COCO `instances_*.json` detection/segmentation loader returning numpy arrays.

Training code wraps the arrays into tensors itself; this module stays
numpy + opencv + pycocotools so it also runs on edge boxes.
"""
from __future__ import annotations

import json
import math
import os
import warnings
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pycocotools import mask as mask_utils

from babo_edge.calibration.errors import DatasetError
from babo_edge.calibration.images import read_image

SIZE_BUCKETS = {"small": 32**2, "medium": 96**2, "large": math.inf}  # COCO's object-area upper bounds


@dataclass
class Sample:
    """One image with its objects; row i of every per-object array is object i."""

    image: np.ndarray  # uint8 HxWx3 RGB
    boxes: np.ndarray  # float32 Nx4, x1 y1 x2 y2 in pixels
    labels: np.ndarray  # int64 N, contiguous 0..C-1
    instance_masks: np.ndarray  # uint8 NxHxW, 0/1
    iscrowd: np.ndarray  # bool N
    image_id: int
    file_name: str


class CocoDetection:
    """Indexable COCO dataset: `dataset[i]` is the Sample of the i-th image by image id.

    Labels are the positions of the categories sorted by category id, so COCO's
    sparse ids (1..90) become 0..79. Boxes are clipped to the image; objects
    whose clipped box has no area (zero-area boxes, boxes wholly outside the
    image) are dropped. An object without segmentation gets its filled box as
    instance mask. Refused at construction with a one-line DatasetError: a
    missing section or field, a duplicate image, category or annotation id, a
    bbox that is not 4 finite numbers, an unknown image or category id.
    """

    def __init__(self, ann_file: str | os.PathLike, images_dir: str | os.PathLike):
        self.ann_file = Path(ann_file)
        self.images_dir = Path(images_dir)
        data = _load_annotation_file(self.ann_file)
        if not self.images_dir.is_dir():
            raise DatasetError(f"images folder {str(self.images_dir)!r} does not exist")
        categories = sorted(self._entries(data, "categories", ("id", "name")), key=lambda c: c["id"])
        self._category_ids = [category["id"] for category in categories]
        self._class_names = [category["name"] for category in categories]
        self._label_of_category = {category_id: label for label, category_id in enumerate(self._category_ids)}
        self._images = sorted(self._entries(data, "images", ("id", "file_name", "height", "width")), key=lambda i: i["id"])
        image_ids = {image["id"] for image in self._images}
        annotations = self._entries(data, "annotations", ("id", "image_id", "category_id", "bbox"))
        for section, entries in (("categories", categories), ("images", self._images), ("annotations", annotations)):
            self._check_unique_ids(section, entries)
        self._annotations_of_image = defaultdict(list)
        for annotation in annotations:
            bbox = annotation["bbox"]
            if not (isinstance(bbox, list) and len(bbox) == 4 and all(
                    isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in bbox)):
                raise self._error(f"annotation {annotation['id']} has a malformed bbox {bbox!r} "
                                  "(expected [x, y, width, height], 4 finite numbers)")
            if annotation["image_id"] not in image_ids:
                raise self._error(f"annotation {annotation['id']} refers to unknown image id {annotation['image_id']!r}")
            if annotation["category_id"] not in self._label_of_category:
                raise self._error(f"annotation {annotation['id']} refers to unknown category id {annotation['category_id']!r}")
            self._annotations_of_image[annotation["image_id"]].append(annotation)

    @property
    def class_names(self) -> list[str]:
        return list(self._class_names)

    @property
    def category_ids(self) -> list[int]:
        return list(self._category_ids)

    def __len__(self) -> int:
        return len(self._images)

    def __getitem__(self, index: int) -> Sample:
        info = self._images[index]
        image = read_image(self.images_dir / info["file_name"])
        height, width = image.shape[:2]
        if (height, width) != (info["height"], info["width"]):
            raise self._error(
                f"image {info['file_name']!r} is {width}x{height} but the annotations say {info['width']}x{info['height']}"
            )
        boxes, labels, masks, crowd = [], [], [], []
        for annotation in self._annotations_of_image[info["id"]]:
            x, y, w, h = annotation["bbox"]
            box = [min(max(x, 0), width), min(max(y, 0), height), min(max(x + w, 0), width), min(max(y + h, 0), height)]
            if box[2] <= box[0] or box[3] <= box[1]:
                continue
            boxes.append(box)
            labels.append(self._label_of_category[annotation["category_id"]])
            masks.append(self._decode_mask(annotation, box, height, width))
            crowd.append(bool(annotation.get("iscrowd", 0)))
        return Sample(
            image=image,
            boxes=np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
            labels=np.asarray(labels, dtype=np.int64),
            instance_masks=np.asarray(masks, dtype=np.uint8).reshape(-1, height, width),
            iscrowd=np.asarray(crowd, dtype=bool),
            image_id=info["id"],
            file_name=info["file_name"],
        )

    def _decode_mask(self, annotation: dict, box: list[float], height: int, width: int) -> np.ndarray:
        segmentation = annotation.get("segmentation")
        if isinstance(segmentation, list):
            segmentation = [polygon for polygon in segmentation if len(polygon) >= 6]
        if not segmentation:
            return box_mask_of([box], (height, width))
        if isinstance(segmentation, dict) and "counts" in segmentation:
            if list(segmentation.get("size", ())) != [height, width]:
                raise self._error(
                    f"annotation {annotation['id']} has an RLE of size {segmentation.get('size')} on a {height}x{width} image"
                )
        elif not isinstance(segmentation, list):
            raise self._error(f"annotation {annotation['id']} has a segmentation that is neither polygons nor RLE")
        return segmentation_to_mask(segmentation, height, width)

    def _entries(self, data: dict, section: str, required_keys: tuple[str, ...]) -> list[dict]:
        entries = data.get(section)
        if not isinstance(entries, list):
            raise self._error(f"has no '{section}' list")
        for position, entry in enumerate(entries):
            missing = [key for key in required_keys if not isinstance(entry, dict) or key not in entry]
            if missing:
                raise self._error(f"{section}[{position}] has no '{missing[0]}'")
        return entries

    def _check_unique_ids(self, section: str, entries: list[dict]) -> None:
        seen = set()
        for entry in entries:
            if entry["id"] in seen:
                raise self._error(f"{section} has a duplicate id {entry['id']!r}")
            seen.add(entry["id"])

    def _error(self, message: str) -> DatasetError:
        return DatasetError(f"{str(self.ann_file)!r}: {message}")


def instance_mask(sample: Sample) -> np.ndarray:
    """HxW uint8 0/1 union of all instance masks, crowd regions included: the objectness GT."""
    return sample.instance_masks.any(axis=0).astype(np.uint8)


def segmentation_to_mask(segmentation: list | dict, height: int, width: int) -> np.ndarray:
    """HxW uint8 0/1 mask of COCO polygons, compressed RLE or uncompressed RLE (as crowd regions use)."""
    if isinstance(segmentation, list):
        rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    elif isinstance(segmentation["counts"], list):
        rle = mask_utils.frPyObjects(segmentation, height, width)
    else:
        rle = segmentation
    with warnings.catch_warnings():
        # pycocotools 2.0.11 trips numpy 2's __array__ copy-keyword deprecation on every decode
        warnings.filterwarnings("ignore", message="__array__ implementation doesn't accept a copy keyword")
        return mask_utils.decode(rle)


def box_mask(sample: Sample) -> np.ndarray:
    """HxW uint8 0/1 union of the sample's filled boxes: the box-level objectness GT."""
    return box_mask_of(sample.boxes, sample.image.shape[:2])


def box_mask_of(boxes, hw: tuple[int, int]) -> np.ndarray:
    """(H, W) uint8 0/1 union of filled (x1, y1, x2, y2) boxes, the one definition used by the
    dataset tools and training alike. A pixel is set when a box overlaps it, so fractional edges
    round outwards: a mask meant to keep objects must not cut their border pixels."""
    height, width = hw
    mask = np.zeros((height, width), dtype=np.uint8)
    for box in boxes:
        x1, y1, x2, y2 = (float(value) for value in box)
        mask[max(math.floor(y1), 0) : max(math.ceil(y2), 0), max(math.floor(x1), 0) : max(math.ceil(x2), 0)] = 1
    return mask


def _load_annotation_file(ann_file: Path) -> dict:
    if not ann_file.is_file():
        raise DatasetError(f"annotation file {str(ann_file)!r} does not exist")
    try:
        with open(ann_file, encoding="utf-8") as file:
            data = json.load(file)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DatasetError(f"annotation file {str(ann_file)!r} is not valid JSON: {error}") from None
    if not isinstance(data, dict):
        raise DatasetError(f"annotation file {str(ann_file)!r} is not a COCO object (expected a JSON object at top level)")
    return data
