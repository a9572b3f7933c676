"""The camera app: a babo-edge IR on live frames, with boxes, the blacked-out background, FPS,
latency and live GMAC* drawn on them.

    python runtime/run_camera.py [--device CPU|GPU|NPU|AUTO] [--model X.xml]
        [--source 0|video.mp4|image-folder|rtsp://...|demo] [--no-show] [--output out.mp4]
        [--report report.json] [--plot blocks.png] [--max-frames N] [--score-threshold 0.5]
        [--hint LATENCY] [--requests 2] [--execution dense|roi|auto]

Default model: the exported demo model (models/zoo/babo-ssdlite-256_ir/INT8/model.xml); default
source: camera 0, else the built-in demo video. Without a display (or with --no-show) no window
opens; the video and report are still written. Stop with Ctrl-C, SIGTERM, q or Esc: the frames
in flight are finished, the video and the MAC* report are written, and the per-block table is
printed. A live source that fails (no frame, or an empty one) is reopened 3 times (after 0.5, 1,
2 s), then the run ends as "source lost". Exit 0 after a run (end of source, lost live source,
Ctrl-C, SIGTERM), 2 on bad input (device, model, source, unwritable output, no frame at all:
nothing written) and on an output that failed at the end (disk full: that file is absent, the
others are written whole), 130 on a second Ctrl-C or SIGTERM (abort, nothing written).
--execution roi|auto runs the detector OMG-first on the foreground's crop (runtime.sparse; same
detections): the overlay shows the path and the crop, and there are no zero counters, hence no
GMAC*, per-block table or --plot.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any


import openvino as ov

from babo_edge.errors import run_cli
from babo_edge.models.accounting import REPORT_SCHEMA, format_report
from babo_edge.models.cli import positive_int, write_json
from babo_edge.artifacts import REPO, ZOO, default_export_dir, ir_path
from babo_edge.runtime.camera import Pipeline, display_available, run
from babo_edge.runtime.detector import EXECUTIONS, HINTS, ModelError, read_ir
from babo_edge.runtime.devices import resolve_device
from babo_edge.runtime.outputs import OutputError, check_writable
from babo_edge.runtime.overlay import DISPLAY_THRESHOLD
from babo_edge.runtime.plots import plot_block_zeros
from babo_edge.runtime.sources import SourceError, default_source, open_source

DEFAULT_MODEL = ir_path(default_export_dir(ZOO / "babo-ssdlite-256.pt"), "int8")
EXPORT_COMMAND = "python export/to_ir.py models/zoo/babo-ssdlite-256.pt"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="CPU", help="OpenVINO device: CPU, GPU, NPU, AUTO, ... (default CPU)")
    parser.add_argument("--model", type=Path, help=f"IR .xml (default: {DEFAULT_MODEL.relative_to(REPO)})")
    parser.add_argument("--source", help="camera index, video file, folder of images, stream URL or 'demo' "
                                         "(default: camera 0, else the demo video)")
    parser.add_argument("--no-show", action="store_true", help="no window (also without a display)")
    parser.add_argument("--output", type=Path, help="annotated video (mp4v)")
    parser.add_argument("--report", type=Path, help="MAC* report JSON (models/accounting.py schema)")
    parser.add_argument("--plot", type=Path, help="PNG of the detector's zeros per block (paper Fig. 5)")
    parser.add_argument("--compare", type=Path, help="a report of another run (e.g. the vanilla model's "
                                                     "--report) whose bars --plot draws beside this run's")
    parser.add_argument("--score-threshold", type=float, default=DISPLAY_THRESHOLD,
                        help=f"boxes drawn from this score (default {DISPLAY_THRESHOLD})")
    parser.add_argument("--max-frames", type=positive_int, help="stop after N frames")
    parser.add_argument("--hint", type=str.upper, choices=HINTS, default="LATENCY", help="OpenVINO performance hint")
    parser.add_argument("--requests", type=positive_int, default=2, help="asynchronous inference requests")
    parser.add_argument("--execution", choices=EXECUTIONS, default="dense",
                        help="dense (the IR as it is, with zero counters), roi or auto (runtime.sparse)")
    args = parser.parse_args(argv)
    if args.execution != "dense" and (args.plot or args.compare):
        parser.error(f"--plot and --compare need the zero counters of --execution dense, not {args.execution}")
    return args


def model_path(path: Path | None) -> Path:
    if path is None and not DEFAULT_MODEL.is_file():
        raise ModelError(f"no model at {DEFAULT_MODEL.relative_to(REPO)}: export the demo model first "
                         f"({EXPORT_COMMAND}) or pass --model")
    return path or DEFAULT_MODEL


def read_report(path: Path) -> dict:
    """A MAC* report (models.accounting schema) to draw beside this run's; checked before the run."""
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise OutputError(f"--compare {path}: cannot read a JSON report ({e})") from None
    if not isinstance(report, dict) or report.get("schema") != REPORT_SCHEMA or "od" not in report.get("networks", {}):
        raise OutputError(f"--compare {path}: not a {REPORT_SCHEMA} report with a detector section")
    return report


def _model_name(report: dict) -> str:
    model = Path(report.get("meta", {}).get("model", "other"))
    return model.parent.parent.name or model.name


@run_cli
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return run_app(args)
    except KeyboardInterrupt:  # while starting, or a second Ctrl-C
        print("\naborted: nothing written", file=sys.stderr)
        return 130


def run_app(args: argparse.Namespace) -> int:
    """Everything is checked before the first frame: a long session never ends in an unwritable path."""
    core = ov.Core()
    device = resolve_device(args.device, core)
    model = model_path(args.model)
    for path in (args.output, args.report, args.plot):
        if path:
            check_writable(path)
    if args.plot and importlib.util.find_spec("matplotlib") is None:
        raise OutputError("--plot needs matplotlib, which is not installed")
    other = read_report(args.compare) if args.compare else None
    ir = read_ir(model, core)
    source = default_source() if args.source is None else open_source(args.source)
    pipeline = Pipeline(ir, source, device, hint=args.hint, num_requests=args.requests,
                        score_threshold=args.score_threshold, max_frames=args.max_frames, core=core,
                        execution=args.execution)
    show = not args.no_show and display_available()
    if not args.no_show and not show:
        print("no display: running without a window")
    print(f"{source.name} -> {model} on {device}; Ctrl-C{', q or Esc' if show else ''} to stop")
    session = run(pipeline, output=args.output, show=show,
                  meta={"model": str(model), "precision": pipeline.detector.info.precision, "hint": args.hint,
                        "score_threshold": args.score_threshold, "execution": args.execution})
    if session.report is None:
        raise SourceError(f"no frame from {source.name} ({session.ended}): nothing written")
    if pipeline.counter is not None:
        print(format_report(session.report, per_layer=False))
    else:
        print("frames per path: " + ", ".join(f"{path} {n}" for path, n in session.report["meta"]["executions"].items()))
    print(f"{session.frames} frames ({session.ended}, {session.dropped} dropped): {session.fps:.1f} FPS, "
          f"mean latency {session.mean_latency_ms:.1f} ms")
    if session.video:
        print(f"video: {session.video}")
    if args.report:
        write_output(args.report, lambda: write_json(args.report, session.report))
        print(f"report: {args.report}")
    if args.plot:
        labels = (model.parent.parent.name or "this run", _model_name(other) if other else "")
        write_output(args.plot, lambda: plot_block_zeros(session.report, args.plot, other, labels))
        print(f"plot: {args.plot}")
    if session.video_error:  # after the report: what could be written is
        raise OutputError(session.video_error)
    return 0


def write_output(path: Path, write: Callable[[], Any]) -> None:
    """`write()` (atomic: whole or absent), a failing disk (full, read-only) as a one-line error."""
    try:
        write()
    except OSError as e:
        raise OutputError(f"cannot write {path}: {e.strerror or e}") from None


if __name__ == "__main__":
    sys.exit(main())
