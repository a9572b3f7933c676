"""The Python front door: one checkpoint and what a user does with it.

    from babo_edge import BaboModel
    model = BaboModel.load("models/zoo/babo-ssdlite-256.pt")
    report = model.export("out_ir", precisions=("fp32", "int8"))   # an ExportReport
    result = model.evaluate()                                      # an EvaluationReport
    macs = model.report(image)                                     # the MAC / MAC* report (dict)

It owns the policy the CLIs share (the built-in dataset as the default data, the class check
against the validation split, the calibration-count warning, the export folder's default), so
every CLI is argparse + one call here + printing. Warnings a user should read are
`BaboWarning`s: the CLIs print them as one `warning: ...` line. torch, openvino and nncf are
imported by the method that needs them.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from babo_edge.artifacts import PRECISIONS, default_export_dir
from babo_edge.errors import BaboWarning

if TYPE_CHECKING:
    import numpy as np

    from babo_edge.calibration.coco import CocoDetection
    from babo_edge.export.report import ExportReport
    from babo_edge.models.builders import ModelConfig
    from babo_edge.models.checkpoint import Checkpoint
    from babo_edge.models.detector import BABODetector
    from babo_edge.train.evaluation import EvaluationReport

PathLike = str | os.PathLike


class BaboModel:
    """A loaded checkpoint: the PyTorch model (`.network`), its checkpoint data and its path."""

    def __init__(self, network: BABODetector, checkpoint: Checkpoint, path: PathLike):
        self.network = network
        self.checkpoint = checkpoint
        self.path = Path(path)

    @classmethod
    def load(cls, path: PathLike) -> BaboModel:
        """Loads a checkpoint through the validated loader (weights only, never code); a file
        that is not a babo-edge checkpoint is a one-line CheckpointError.

        :param path: a checkpoint file (models/checkpoint.py format).
        """
        from babo_edge.models.checkpoint import load_model

        network, checkpoint = load_model(path)
        return cls(network, checkpoint, path)

    @property
    def config(self) -> ModelConfig:
        return self.checkpoint.config

    @property
    def class_names(self) -> list[str]:
        return self.checkpoint.class_names

    def export(self, output: PathLike | None = None, *, precisions: tuple[str, ...] = PRECISIONS,
               input_size: int | None = None, calib: PathLike | None = None, subset_size: int = 300,
               val: PathLike | None = None, val_images: int | None = None, validate: bool = True,
               max_ap_drop: float | None = None, preset: str = "performance", dynamic_batch: bool = False,
               raw_outputs: bool = False, parity_images: int = 8) -> ExportReport:
        """ONNX, OpenVINO IR and NNCF INT8 (mask path kept binary), each checked against PyTorch,
        written into `output` all at once or not at all; returns the export report.

        :param output: the export folder (default: `<checkpoint stem>_ir` beside the checkpoint); an
            existing folder is replaced only when it is a previous export.
        :param precisions: any of fp32, fp16, int8.
        :param input_size: a square input size (default: the checkpoint's); the OMG scales alike.
        :param calib: calibration images: a folder of images or a dataset folder with a calib split
            (default: the built-in dataset's).
        :param subset_size: calibration images to use.
        :param val: a dataset folder with a val split for the FP32-vs-INT8 accuracy (default: the
            built-in one, skipped with a warning when its classes are not the model's).
        :param val_images: evaluate on the first N val images (default: all).
        :param validate: measure the accuracy at all.
        :param max_ap_drop: INT8 through nncf.quantize_with_accuracy_control, AP points allowed to be lost.
        :param preset: the NNCF preset, performance or mixed.
        :param dynamic_batch: a dynamic batch dimension (default: batch 1, as the NPU needs).
        :param raw_outputs: head outputs and anchors instead of in-graph decoding and NMS.
        :param parity_images: the first N calibration images check parity.
        """
        from babo_edge.export.options import ExportOptions, export_config
        from babo_edge.export.pipeline import export_all, prepare_output
        from babo_edge.export.quantize import CalibrationImages

        config = export_config(self.config, input_size)
        calibration = CalibrationImages(config.input_size, subset_size, calib)
        validation = self._export_validation(val, validate, max_ap_drop)
        output = Path(output) if output is not None else default_export_dir(self.path)
        work = prepare_output(output)
        if calibration.available < subset_size:
            warnings.warn(f"{calibration.available} calibration images found, {subset_size} asked for; "
                          f"calibrating on {calibration.available}", BaboWarning, stacklevel=2)
        options = ExportOptions(precisions=tuple(precisions), dynamic_batch=dynamic_batch, raw_outputs=raw_outputs,
                                preset=preset, subset_size=subset_size, max_ap_drop=max_ap_drop,
                                parity_images=parity_images, val_images=val_images)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # the ONNX exporter's notes on traced shape arithmetic
            return export_all(self.network, self.checkpoint, self.path, output, calibration, validation, config,
                              options, work=work)

    def _export_validation(self, val: PathLike | None, validate: bool, max_ap_drop: float | None
                           ) -> CocoDetection | None:
        """The val split the export measures AP on, or None (with a warning) when the default
        one does not fit the model; an explicit `val` that does not fit is an error."""
        from babo_edge.export.options import ExportError
        from babo_edge.train.evaluation import check_classes

        if not validate:
            if max_ap_drop is not None:
                raise ExportError("max_ap_drop needs a validation split: do not skip the validation")
            return None
        validation = _open_split(val, "val")
        try:
            check_classes(self.network, validation, self.class_names)
        except ValueError as e:
            if val is not None or max_ap_drop is not None:
                raise ExportError(f"{e}; pass this model's dataset as the validation split") from None
            warnings.warn(f"accuracy not measured: {e}; pass this model's dataset as the validation split",
                          BaboWarning, stacklevel=3)
            return None
        return validation

    def check_evaluation(self, data: PathLike | None = None, *, split: str = "val",
                         mask_source: str | None = None) -> str:
        """What `evaluate` would refuse, raised before any image is read: a missing split, other
        classes, a mask source the model cannot use. Returns the mask source it would use."""
        from babo_edge.train.evaluation import check_classes, resolve_mask_source

        check_classes(self.network, _open_split(data, split), self.class_names)
        return resolve_mask_source(self.network, mask_source)

    def evaluate(self, data: PathLike | None = None, *, split: str = "val", mask_source: str | None = None,
                 batch_size: int = 8, limit: int | None = None, progress: bool = True) -> EvaluationReport:
        """COCO AP, FG-ratio, mask recall, zeros% and GMAC* of the PyTorch model on a split.

        :param data: a COCO-format dataset folder (default: the built-in dataset).
        :param split: the split to evaluate.
        :param mask_source: omg, none, gt-instance, gt-box, sr or random:<fg-ratio> (train.masks;
            default: the model's own mask).
        :param batch_size: images per forward pass.
        :param limit: evaluate only the first N images.
        :param progress: show a progress bar.
        """
        from babo_edge.train.evaluation import evaluate

        return evaluate(self.network, _open_split(data, split), input_size=self.config.input_size,
                        mask_source=mask_source, class_names=self.class_names, batch_size=batch_size,
                        limit=limit, progress=progress)

    def report(self, image: np.ndarray, meta: dict | None = None) -> dict:
        """The per-layer MAC / MAC* report (models.accounting schema) of one (H, W, 3) RGB image."""
        import torch

        from babo_edge.models.preprocess import to_model_input
        from babo_edge.models.profiling import mac_report

        self.network.eval()
        inputs = torch.from_numpy(to_model_input(image, tuple(self.config.input_size)))[None]
        return mac_report(self.network, inputs, meta=meta)


def _open_split(data: PathLike | None, split: str) -> CocoDetection:
    from babo_edge.calibration.synthetic import ensure_default_dataset
    from babo_edge.train.evaluation import open_dataset

    return open_dataset(data if data is not None else ensure_default_dataset(), split)
