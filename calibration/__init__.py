"""Data for babo-edge: COCO and image-folder loaders, image decoding, and the built-in synthetic dataset.

numpy + opencv (+ pycocotools) only, no torch, so it runs on edge boxes.
Submodules are imported on first use, keeping `import babo_edge.calibration` cheap.
"""
import importlib

_EXPORTS = {
    "DatasetError": "errors",
    "ImageReadError": "errors",
    "read_image": "images",
    "CocoDetection": "coco",
    "Sample": "coco",
    "instance_mask": "coco",
    "box_mask": "coco",
    "box_mask_of": "coco",
    "ImageFolder": "folder",
    "generate": "synthetic",
    "default_dataset_dir": "synthetic",
    "ensure_default_dataset": "synthetic",
    "split_files": "synthetic",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)


def __dir__():
    return __all__
