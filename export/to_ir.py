"""Checkpoint -> ONNX -> OpenVINO IR FP32 / FP16 / INT8: `python export/to_ir.py CKPT [--out DIR]`.

Writes model.onnx, model_{fp32,fp16,int8}.xml/.bin and export_report.json into the output
folder (default: CKPT's folder / <CKPT stem>_ir), prints parity against PyTorch, and exits 1
when ONNX or FP32 IR do not match PyTorch or a mask is not exactly 0/1 after FP16 / INT8.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from calibration.errors import DatasetError
from export.pipeline import REPORT_FILE, ExportOptions, export_all
from export.quantize import PRESETS, CalibrationImages, MaskQuantizedError
from models.checkpoint import CheckpointError, load_model
from models.cli import positive_int


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path, help="checkpoint file (models/checkpoint.py format)")
    parser.add_argument("--out", type=Path, help="output folder (default: <checkpoint stem>_ir beside it)")
    parser.add_argument("--calib-images", type=Path, help="folder of calibration images (default: the "
                                                          "calib split of the built-in synthetic dataset)")
    parser.add_argument("--calib-count", type=positive_int, default=300, help="calibration images to use")
    parser.add_argument("--parity-images", type=positive_int, default=8,
                        help="the first N calibration images also check parity")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="performance",
                        help="NNCF preset: performance (symmetric) or mixed (asymmetric activations)")
    parser.add_argument("--no-int8", action="store_true", help="stop after the FP32 / FP16 IR")
    parser.add_argument("--dynamic-batch", action="store_true", help="export with a dynamic batch size")
    args = parser.parse_args(argv)

    try:
        model, checkpoint = load_model(args.checkpoint)
        calibration = CalibrationImages(checkpoint.config.input_size, args.calib_count, args.calib_images)
    except (CheckpointError, DatasetError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out_dir = args.out or args.checkpoint.with_name(f"{args.checkpoint.stem}_ir")
    parity_images = [calibration[i] for i in range(min(args.parity_images, len(calibration)))]
    options = ExportOptions(dynamic_batch=args.dynamic_batch, int8=not args.no_int8, preset=args.preset,
                            subset_size=args.calib_count)
    try:
        report = export_all(model, checkpoint, out_dir, calibration, parity_images, options)
    except (DatasetError, MaskQuantizedError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    for name, parity in report.parity.items():
        print(f"{name:5s} {'vs fp32 IR' if name == 'int8' else 'vs PyTorch':11s} "
              f"detections {parity.candidate_detections}/{parity.reference_detections} "
              f"(untied unmatched {parity.unmatched}), max |score| diff {parity.max_score_diff:.2e}, "
              f"max |box| diff {parity.max_box_diff:.2e} px, mask IoU {parity.mask_iou:.4f} "
              f"({parity.mask_mismatches} px differ)")
    print(f"written to {out_dir} (report: {out_dir / REPORT_FILE})")
    for name, problems in report.failures.items():
        print(f"error: {name}: {'; '.join(problems)}", file=sys.stderr)
    return 1 if report.failures else 0


if __name__ == "__main__":
    sys.exit(main())
