"""Pruning + INT8, the compressed-object-detection paper's Table 1 with what it lacks, in one run:

    python benchmarks/pruning_table.py models/zoo/vanilla-ssdlite-256.pt \\
        --one-shot magnitude:0.3,magnitude:0.5,channels:0.5 --rows runs/prune/ft/last.pt [--threads 1]

Rows: the base checkpoint (unpruned, the reference), each --one-shot spec applied to it (no
fine-tuning: the paper's one-shot pruning), and each --rows checkpoint (fine-tuned ones; their
sparsity is measured). Columns: float AP and AP50 on the val split, the INT8 IR's .bin size and
its gzip size (NNCF post-training INT8, the mask path kept float and binary), GMAC, GMAC* (zero
activations skipped) and GMAC* with weight zeros also skipped (models.accounting), and the INT8
latency ratio to the unpruned INT8 model (interleaved rounds, median of the per-round ratios).
`--plot` draws AP against the gzip size and against the INT8 latency (the README's figure),
`--json` keeps the rows.
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from babo_edge.errors import run_cli  # noqa: E402
from babo_edge.train.options import PruneSpec  # noqa: E402


@dataclass
class Row:
    name: str
    kind: str  # unpruned | one-shot | checkpoint
    method: str
    scope: str
    sparsity: float  # zero conv weights in the scope (all for unpruned and checkpoint rows)
    nonzero_weights: int  # non-zero detector conv weights (channel pruning removes weights)
    ap: float
    ap50: float
    bin_bytes: int
    gzip_bytes: int
    gmac: float
    gmac_star: float
    gmac_star_w: float
    latency_ms: float | None = None
    latency_ratio: float | None = None


def int8_ir(model, config, class_names, folder: Path, calibration) -> Path:
    """The INT8 IR of a float model through the package's export path (ONNX -> OpenVINO ->
    NNCF post-training quantization with the mask path ignored)."""
    from babo_edge.export.onnx_export import export_onnx
    from babo_edge.export.openvino_ir import convert, model_info, save_ir, set_model_info
    from babo_edge.export.quantize import quantize_int8

    ov_model = convert(export_onnx(model, tuple(config.input_size), folder / "model.onnx"))
    set_model_info(ov_model, model_info(model, config, class_names, ov_model))
    return save_ir(quantize_int8(ov_model, calibration).model, folder / "model_int8.xml", "int8")


def measure_row(name: str, kind: str, spec: PruneSpec | None, model, config, class_names, work: Path,
                calibration, limit: int | None) -> tuple[Row, Path]:
    from babo_edge.calibration.synthetic import ensure_default_dataset
    from babo_edge.models.pruning import scoped_convs, weight_sparsity
    from babo_edge.train.evaluation import evaluate

    model.eval()
    result = evaluate(model, ensure_default_dataset(), input_size=config.input_size, class_names=class_names,
                      limit=limit, progress=False)
    folder = work / name.replace("/", "_").replace(":", "_")
    folder.mkdir(parents=True)
    xml = int8_ir(model, config, class_names, folder, calibration)
    data = xml.with_suffix(".bin").read_bytes()
    scope = spec.scope if spec else "all"
    return Row(name=name, kind=kind, method=spec.method if spec else "-", scope=scope if spec else "-",
               sparsity=weight_sparsity(model, scope),
               nonzero_weights=sum(int((c.weight != 0).sum()) for c in scoped_convs(model, "all")),
               ap=result.metrics["AP"], ap50=result.metrics["AP50"],
               bin_bytes=len(data), gzip_bytes=len(gzip.compress(data, 6)), gmac=result.gmac,
               gmac_star=result.gmac_star, gmac_star_w=result.gmac_star_w), xml


def pruning_table(base: Path, one_shot: list[PruneSpec], checkpoints: list[Path], *, limit: int | None = None,
                  calib_images: int = 100, rounds: int = 9, calls: int = 20, threads: int | None = 1) -> list[Row]:
    """Measures every row (see the module docstring); the first row is the unpruned base."""
    import openvino as ov
    import torch

    from babo_edge.export.quantize import CalibrationImages
    from babo_edge.models.checkpoint import load_model
    from babo_edge.runtime.detector import preprocess
    from babo_edge.runtime.latency import load_val_frames
    from babo_edge.runtime.timing import interleaved_medians

    torch.set_flush_denormal(True)
    rows, irs = [], []
    with tempfile.TemporaryDirectory(prefix="pruning-table-") as tmp:
        work = Path(tmp)
        input_size = tuple(load_model(base)[1].config.input_size)
        calibration = CalibrationImages(input_size, calib_images)
        jobs = ([(f"{base} (unpruned)", "unpruned", None, base)]
                + [(f"{s.method}:{s.ratio:g}:{s.scope}", "one-shot", s, base) for s in one_shot]
                + [(str(path), "checkpoint", None, path) for path in checkpoints])
        for index, (name, kind, spec, path) in enumerate(jobs):
            print(f"[{index + 1}/{len(jobs)}] {name}", file=sys.stderr, flush=True)
            model, config, class_names = pruned(path, spec)
            row, xml = measure_row(name, kind, spec, model, config, class_names, work, calibration, limit)
            rows.append(row)
            irs.append(xml)
        core = ov.Core()
        settings = {"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1}
        if threads:
            settings["INFERENCE_NUM_THREADS"] = threads
        requests = [core.compile_model(str(xml), "CPU", settings).create_infer_request() for xml in irs]
        inputs = [{0: preprocess(frame, input_size)} for frame in load_val_frames(16)]
        medians = interleaved_medians([r.infer for r in requests], inputs, rounds, calls)
    ratios = medians / medians[:, :1]
    for m, row in enumerate(rows):
        row.latency_ms = float(sorted(medians[:, m])[len(medians) // 2])
        row.latency_ratio = float(sorted(ratios[:, m])[len(ratios) // 2])
    return rows


def pruned(path: Path, spec: PruneSpec | None):
    """The model of a checkpoint with a one-shot pruning spec applied (None: as saved)."""
    from babo_edge.models.checkpoint import load_model
    from babo_edge.models.pruning import prune_channels, prune_magnitude

    model, ckpt = load_model(path)
    config = ckpt.config
    if spec is not None and spec.method == "magnitude":
        prune_magnitude(model, spec.ratio, spec.scope)
    elif spec is not None:
        model, config = prune_channels(model, config, spec.ratio, spec.scope)
    return model, config, ckpt.class_names


SWEEP_SPARSITIES = (0.1, 0.2, 0.3, 0.4, 0.5, 0.7, 0.8, 0.9)  # the paper's Table 1 columns


def sparsity_sweep(base: Path, method: str = "magnitude", sparsities=SWEEP_SPARSITIES, *,
                   scopes=("backbone", "heads", "all"), limit: int | None = None,
                   calib_images: int = 100) -> dict[str, list[Row]]:
    """The paper's Table 1: one-shot pruning of each scope at each ratio, every cell measured as in
    the main table except latency (zero weights gain no time; channel rows are timed there)."""
    import torch

    from babo_edge.export.quantize import CalibrationImages
    from babo_edge.models.checkpoint import load_model

    torch.set_flush_denormal(True)
    calibration = CalibrationImages(load_model(base)[1].config.input_size, calib_images)
    cells = [(scope, PruneSpec(method, ratio, scope) if ratio else None)
             for scope in scopes for ratio in (0.0, *sparsities)]
    table: dict[str, list[Row]] = {scope: [] for scope in scopes}
    with tempfile.TemporaryDirectory(prefix="pruning-sweep-") as tmp:
        unpruned = None
        for index, (scope, spec) in enumerate(cells):
            name = f"{method}:{spec.ratio:g}:{scope}" if spec else f"{base} (unpruned)"
            print(f"[{index + 1}/{len(cells)}] {name}", file=sys.stderr, flush=True)
            if spec is None and unpruned is not None:
                table[scope].append(unpruned)
                continue
            model, config, class_names = pruned(base, spec)
            row = measure_row(name, "one-shot" if spec else "unpruned", spec, model, config, class_names,
                              Path(tmp), calibration, limit)[0]
            unpruned = unpruned or row
            table[scope].append(row)
    return table


def format_sweep(table: dict[str, list[Row]]) -> str:
    """The paper's Table 1 layout: one block per scope, a column per sparsity, a line per measure
    (the paper's memory line is 4 bytes x parameters; ours is the measured INT8 file)."""
    ref = next(iter(table.values()))[0]
    lines = []
    for scope, rows in table.items():
        where = {"all": "the backbone and the heads"}.get(scope, f"the {scope}")
        lines += [f"**pruned in {where}** ({rows[-1].method}, one-shot)", "",
                  "| | " + " | ".join(f"{100 * r.sparsity:.0f}%" if r.kind != "unpruned" else "0%"
                                       for r in rows) + " |",
                  "|---|" + "---:|" * len(rows)]
        measures = [("AP50", lambda r: f"{r.ap50:.1f}"), ("AP", lambda r: f"{r.ap:.1f}"),
                    ("INT8 gzip MB", lambda r: f"{r.gzip_bytes / 1e6:.2f}"),
                    ("INT8 .bin MB", lambda r: f"{r.bin_bytes / 1e6:.2f}"),
                    ("non-zero weights x", lambda r: f"{r.nonzero_weights / ref.nonzero_weights:.2f}"),
                    ("GMAC*", lambda r: f"{r.gmac_star:.3f}"),
                    ("GMAC* w/ weight zeros", lambda r: f"{r.gmac_star_w:.3f}")]
        lines += [f"| {label} | " + " | ".join(cell(r) for r in rows) + " |" for label, cell in measures]
        lines.append("")
    return "\n".join(lines)


def format_rows(rows: list[Row]) -> str:
    """A markdown table; size and latency ratios are to the first (unpruned) row."""
    ref = rows[0]
    lines = ["| model | kind | scope | weight zeros % | non-zero weights x | AP | AP50 | INT8 .bin MB | gzip MB | gzip x | "
             "GMAC | GMAC* | GMAC* w/ weight zeros | INT8 ms | INT8 latency x |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r.name} | {r.kind} | {r.scope} | {100 * r.sparsity:.1f} | "
                     f"{r.nonzero_weights / ref.nonzero_weights:.2f} | {r.ap:.1f} | {r.ap50:.1f} | "
                     f"{r.bin_bytes / 1e6:.2f} | {r.gzip_bytes / 1e6:.2f} | {r.gzip_bytes / ref.gzip_bytes:.2f} | "
                     f"{r.gmac:.3f} | {r.gmac_star:.3f} | {r.gmac_star_w:.3f} | {r.latency_ms:.2f} | "
                     f"{r.latency_ratio:.2f} |")
    return "\n".join(lines)


MARKERS = {"unpruned": "*", "one-shot": "x", "checkpoint": "o"}


def plot_rows(rows: list[Row], path: Path, title: str) -> Path:
    """AP vs INT8 gzip size (x of the unpruned) and AP vs INT8 latency (x of the unpruned), one
    point per row, marked by kind and labelled; written atomically."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from babo_edge.files import atomic_write

    ref = rows[0]
    figure = Figure(figsize=(11, 4.5), layout="constrained")
    FigureCanvasAgg(figure)
    panels = figure.subplots(1, 2, sharey=True)
    for axes, (label, value) in zip(panels, [("INT8 gzip size (x unpruned)", lambda r: r.gzip_bytes / ref.gzip_bytes),
                                             ("INT8 latency (x unpruned)", lambda r: r.latency_ratio)]):
        for row in rows:
            axes.scatter(value(row), row.ap, marker=MARKERS[row.kind], s=60, color="black" if row is ref else None)
            axes.annotate(short_name(row), (value(row), row.ap), textcoords="offset points", xytext=(5, 4),
                          fontsize=7)
        axes.set_xlabel(label)
        axes.grid(alpha=0.3)
    panels[0].set_ylabel("AP (float model, val)")
    figure.suptitle(title)
    with atomic_write(path, "wb") as file:
        figure.savefig(file, format="png", dpi=120)
    return path


def short_name(row: Row) -> str:
    if row.kind == "unpruned":
        return "unpruned"
    return f"{row.name} (one-shot)" if row.kind == "one-shot" else Path(row.name).parent.name


def prune_specs(text: str) -> list[PruneSpec]:
    try:
        return [PruneSpec.parse(part) for part in text.split(",") if part]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def ratios(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(part) for part in text.split(",") if part)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a comma list of ratios such as 0.1,0.5") from None
    if not values or not all(0 < v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"{text!r}: every ratio must be in (0, 1)")
    return values


@run_cli(also=(ValueError, OSError))
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path, help="the unpruned base checkpoint (reference row)")
    parser.add_argument("--one-shot", type=prune_specs, default=[], metavar="SPECS",
                        help="comma list of --prune specs applied once to the base, e.g. magnitude:0.5:heads")
    parser.add_argument("--rows", type=Path, nargs="*", default=[], help="further checkpoints (fine-tuned)")
    parser.add_argument("--limit", type=int, help="evaluate on the first N val images (default: all)")
    parser.add_argument("--calib-images", type=int, default=100, help="INT8 calibration images")
    parser.add_argument("--rounds", type=int, default=9, help="interleaved latency rounds")
    parser.add_argument("--calls", type=int, default=20, help="INT8 inferences per model per round")
    parser.add_argument("--threads", type=int, default=1, help="torch and OpenVINO threads")
    parser.add_argument("--sweep", choices=("magnitude", "channels"),
                        help="instead: the paper's Table 1, one-shot METHOD per scope x sparsity (no latency)")
    parser.add_argument("--sparsities", type=ratios, default=SWEEP_SPARSITIES, metavar="LIST",
                        help="comma list of --sweep ratios (default: the paper's 0.1..0.9)")
    parser.add_argument("--plot", type=Path, help="PNG of AP vs INT8 size and vs INT8 latency")
    parser.add_argument("--json", type=Path, help="the rows as JSON")
    args = parser.parse_args(argv)
    import torch

    from babo_edge.runtime.latency import cpu_description

    torch.set_num_threads(args.threads)
    print(f"CPU: {cpu_description()}; threads {args.threads}")
    if args.sweep:
        if args.plot or args.one_shot or args.rows:
            parser.error("--sweep makes its own cells; it takes no --one-shot, --rows or --plot")
        table = sparsity_sweep(args.checkpoint, args.sweep, args.sparsities, limit=args.limit,
                               calib_images=args.calib_images)
        print(format_sweep(table))
        rows = [row for scope_rows in table.values() for row in scope_rows]
    else:
        rows = pruning_table(args.checkpoint, args.one_shot, args.rows, limit=args.limit,
                             calib_images=args.calib_images, rounds=args.rounds, calls=args.calls,
                             threads=args.threads)
        print(format_rows(rows))
    if args.json:
        from babo_edge.files import atomic_write
        with atomic_write(args.json, "w") as file:
            json.dump({"cpu": cpu_description(), "threads": args.threads, "rows": [asdict(r) for r in rows]}, file,
                      indent=2)
        print(f"written to {args.json}")
    if args.plot:
        print(f"drawn to {plot_rows(rows, args.plot, f'Pruning + INT8: {args.checkpoint.stem}')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
