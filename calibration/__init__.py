"""Data for babo-edge: COCO and image-folder loaders, image decoding, and the built-in synthetic dataset.

numpy + opencv (+ pycocotools) only, no torch, so it runs on edge boxes.
Submodules are imported on first use, keeping `import calibration` cheap.
"""
import importlib

_EXPORTS = {
    "DatasetError": "calibration.errors",
    "ImageReadError": "calibration.errors",
    "read_image": "calibration.images",
    "CocoDetection": "calibration.coco",
    "Sample": "calibration.coco",
    "instance_mask": "calibration.coco",
    "box_mask": "calibration.coco",
    "ImageFolder": "calibration.folder",
    "generate": "calibration.synthetic",
    "default_dataset_dir": "calibration.synthetic",
    "ensure_default_dataset": "calibration.synthetic",
    "split_files": "calibration.synthetic",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'calibration' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)


def __dir__():
    return __all__
