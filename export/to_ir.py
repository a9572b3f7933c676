"""Checkpoint -> ONNX, OpenVINO IR FP32 / FP16 / INT8 and an OVMS repository, checked and reported.

    python export/to_ir.py CKPT [--output DIR] [--calib DATA] [--subset-size 300]
        [--precision fp32,fp16,int8] [--max-ap-drop X] [--input-size N] [--static|--dynamic-batch]

Default output: <CKPT stem>_ir beside the checkpoint; default calibration and validation data:
the built-in dataset's calib and val splits. Exit 0 when every artifact is written and checked,
1 when written but a parity check failed (see the report), 2 on bad input (nothing written),
130 on Ctrl-C (nothing written).
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from babo_edge.errors import run_cli
from babo_edge.export.options import PRESETS, ExportError
from babo_edge.models.cli import choice_list, positive_int
from babo_edge.artifacts import PRECISIONS, default_export_dir


def non_negative_float(text: str) -> float:
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path, help="checkpoint file (models/checkpoint.py format)")
    parser.add_argument("--output", type=Path, help="output folder (default: <checkpoint stem>_ir beside it)")
    parser.add_argument("--calib", type=Path, help="calibration data: a folder of images, or a dataset folder "
                                                   "with instances_calib.json (default: built-in calib split)")
    parser.add_argument("--subset-size", type=positive_int, default=300, help="calibration images to use")
    parser.add_argument("--precision", type=choice_list(PRECISIONS, "precisions"), default=PRECISIONS,
                        help="comma list of fp32, fp16, int8 (default: all)")
    parser.add_argument("--max-ap-drop", type=non_negative_float,
                        help="INT8 with nncf.quantize_with_accuracy_control: AP points allowed to be lost on --val")
    parser.add_argument("--input-size", type=positive_int, help="square input size (default: the checkpoint's)")
    batch = parser.add_mutually_exclusive_group()
    batch.add_argument("--static", dest="dynamic_batch", action="store_false", help="batch 1 (default; NPU)")
    batch.add_argument("--dynamic-batch", dest="dynamic_batch", action="store_true", help="dynamic batch size")
    parser.set_defaults(dynamic_batch=False)  # two actions share the flag: store_false would default it to True
    parser.add_argument("--raw-outputs", action="store_true",
                        help="output head logits/deltas (+ model_anchors.npy) instead of in-graph decoding and NMS")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="performance",
                        help="NNCF preset: performance (symmetric) or mixed (asymmetric activations)")
    parser.add_argument("--val", type=Path, help="dataset folder with instances_val.json for FP32-vs-INT8 AP "
                                                 "(default: the built-in val split)")
    parser.add_argument("--val-images", type=positive_int, help="evaluate on the first N val images (default: all)")
    parser.add_argument("--no-val", action="store_true", help="skip the accuracy comparison")
    parser.add_argument("--parity-images", type=positive_int, default=8,
                        help="the first N calibration images check parity")
    return parser.parse_args(argv)


@run_cli
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.no_val and args.max_ap_drop is not None:
        raise ExportError("--max-ap-drop needs a validation split; drop --no-val")
    # The stages' heavy imports (torch, openvino, nncf) only now: --help and argument errors stay fast.
    import nncf

    from babo_edge.export.report import REPORT_FILE, format_summary
    from babo_edge.model import BaboModel

    nncf.set_log_level(logging.WARNING)
    output = args.output or default_export_dir(args.checkpoint)
    try:
        report = BaboModel.load(args.checkpoint).export(
            output, precisions=args.precision, input_size=args.input_size, calib=args.calib,
            subset_size=args.subset_size, val=args.val, val_images=args.val_images, validate=not args.no_val,
            max_ap_drop=args.max_ap_drop, preset=args.preset, dynamic_batch=args.dynamic_batch,
            raw_outputs=args.raw_outputs, parity_images=args.parity_images)
    except KeyboardInterrupt:
        print(f"\ninterrupted: nothing written to {output}", file=sys.stderr)
        return 130
    print(format_summary(report))
    print(f"written to {output} (report: {output / REPORT_FILE})")
    for name, problems in report.failures.items():
        print(f"error: {name}: {'; '.join(problems)}", file=sys.stderr)
    return 1 if report.failures else 0


if __name__ == "__main__":
    sys.exit(main())
