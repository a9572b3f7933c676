"""Latency, throughput and GMAC* of exported models on one device, side by side, with a regression gate.

    python runtime/benchmark.py [--model DIR|XML ...] [--device CPU] [--precision fp32,int8]
        [--frames 32] [--duration 5] [--pytorch CKPT ...] [--json out.json]
        [--baseline FILE --max-regression 0.10]
        [--execution dense,roi,auto [--scenes video,val,empty] [--rounds 5]]
        [--crop-curve curve.png [--rounds 5]]

Default models: models/zoo/vanilla-ssdlite-256_ir and models/zoo/babo-ssdlite-256_ir (those
present). Exit 0, 1 when a row regressed against --baseline (one line per metric), 2 on bad
input (missing model or device, corrupt baseline), 130 on Ctrl-C. See runtime/latency.py and runtime/gate.py.
With --execution, frame latency of each execution mode (runtime.sparse) per scene instead:
the demo video, the val split and empty (black) frames, modes side by side with vanilla.
With --crop-curve, latency against crop area (OMG + ROI model of growing crops, the dense graph,
empty frames) as ratios to the vanilla model, printed and drawn.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import asdict
from pathlib import Path


import numpy as np
import openvino as ov

from babo_edge.artifacts import PRECISIONS
from babo_edge.errors import run_cli
from babo_edge.models.cli import choice_list, positive_int, write_json
from babo_edge.runtime.detector import EXECUTIONS
from babo_edge.runtime.devices import resolve_device
from babo_edge.runtime.gate import compare_to_baseline, other_machine, read_baseline
from babo_edge.runtime.latency import (BenchmarkError, Settings, compare_executions, crop_latency_curve, default_model_folders,
                                       load_val_frames, resolve_targets, run_benchmark)
from babo_edge.runtime.latency_table import format_crop_curve, format_executions, format_table
from babo_edge.runtime.plots import plot_crop_curve

CROP_CURVE_CALLS = 10  # per model and round
SCENES = ("video", "val", "empty")


def fraction(text: str) -> float:
    value = float(text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be a fraction in [0, 1), e.g. 0.10; got {text}")
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", nargs="+", type=Path,
                        help="export folders (DIR/FP32, DIR/INT8, ...) or IR .xml files; the first row is the "
                             "reference of the ratios (default: the vanilla and BABO demo exports)")
    parser.add_argument("--device", default="CPU", help="OpenVINO device: CPU, GPU, NPU, GPU.1, AUTO, ...")
    parser.add_argument("--precision", type=choice_list(PRECISIONS, "precisions"), default=("fp32", "int8"),
                        help="precisions of export folders, comma list of fp32, fp16, int8 (default: fp32,int8)")
    parser.add_argument("--frames", type=positive_int, default=32, help="val images to run on (default 32)")
    parser.add_argument("--duration", type=positive_float, default=5.0,
                        help="minimum seconds of each timed phase per row (default 5)")
    parser.add_argument("--data", type=Path, help="dataset folder with instances_val.json (default: built-in)")
    parser.add_argument("--pytorch", nargs="+", type=Path, default=[], metavar="CKPT",
                        help="also time these checkpoints in PyTorch eager (CPU), as the reference to beat")
    parser.add_argument("--json", type=Path, help="write the report (schema babo-edge/benchmark) here")
    parser.add_argument("--baseline", type=Path, help="a previous --json report: exit 1 when a row regressed")
    parser.add_argument("--max-regression", type=fraction, default=0.10,
                        help="allowed median latency rise / throughput fall against --baseline (default 0.10)")
    parser.add_argument("--execution", type=choice_list(EXECUTIONS, "execution modes"),
                        help="compare these execution modes (comma list of dense, roi, auto) per scene instead")
    parser.add_argument("--scenes", type=choice_list(SCENES, "scenes"), default=SCENES,
                        help="with --execution: comma list of video, val, empty (default: all)")
    parser.add_argument("--crop-curve", type=Path, metavar="PNG",
                        help="latency against crop area of the BABO models vs the vanilla one, drawn here instead")
    parser.add_argument("--rounds", type=positive_int, default=5,
                        help="with --execution or --crop-curve: interleaved rounds")
    return parser.parse_args(argv)


def scene_frames(scenes, count: int, data: Path | None) -> dict:
    """The frames of each scene: the demo video, val images, and black frames of the video's size
    (an empty scene: the demo OMG keeps no pixel of them)."""
    frames = {scene: load_val_frames(count, data, scene) for scene in scenes if scene != "empty"}
    if "empty" in scenes:
        shape = (frames.get("video") or load_val_frames(1, data, "video"))[0].shape
        frames["empty"] = [np.zeros(shape, np.uint8)] * count
    return frames


def model_paths(args: argparse.Namespace) -> list[Path]:
    """--model, or the default demo exports that are present (a note for each missing one)."""
    if args.model:
        return args.model
    present, notes = default_model_folders()
    if not present:
        raise BenchmarkError("; ".join(notes))
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    return present


@run_cli
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    core = ov.Core()
    try:
        device = resolve_device(args.device, core)
        targets = resolve_targets(model_paths(args), args.precision)
        missing = [path for path in args.pytorch if not path.is_file()]
        if missing:
            raise BenchmarkError(f"{missing[0]}: no such checkpoint")
        baseline = read_baseline(args.baseline) if args.baseline else None
        if args.crop_curve:
            report = crop_latency_curve(targets, device, args.rounds, CROP_CURVE_CALLS, core)
            print(format_crop_curve(report))
            plot_crop_curve(report, args.crop_curve)
            print(f"drawn to {args.crop_curve}")
            if args.json:
                write_json(args.json, report)
            return 0
        if args.execution:
            report = compare_executions(targets, scene_frames(args.scenes, args.frames, args.data), args.execution,
                                        device, args.rounds, core)
            print(format_executions(report))
            if args.json:
                write_json(args.json, report)
            return 0
        frames = load_val_frames(args.frames, args.data)
        settings = Settings(device=device, frames=args.frames, duration=args.duration)
        report = asdict(run_benchmark(targets, frames, settings, args.pytorch, core))
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    print(format_table(report))
    if args.json:
        write_json(args.json, report)
        print(f"written to {args.json}")
    if baseline is None:
        return 0
    mismatch = other_machine(baseline, report)
    if mismatch:
        print(f"note: {mismatch}")
    comparison = compare_to_baseline(report["rows"], baseline["rows"], args.max_regression)
    for line in comparison.not_in_baseline:
        print(f"note: {line}")
    for line in comparison.regressions:
        print(f"regression: {line}", file=sys.stderr)
    if not comparison.regressions:
        print(f"no regression against {args.baseline} (limit {args.max_regression:.0%})")
    return 1 if comparison.regressions else 0


if __name__ == "__main__":
    sys.exit(main())
