"""The benchmark's reports as text: the rows side by side (runtime.latency.run_benchmark), the
execution modes per scene (compare_executions) and the crop curve (crop_latency_curve). Apart
from the measuring: a layout change touches no timing code."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from babo_edge.runtime.latency import PYTORCH


def precision_label(precision: str | None) -> str:
    return "PyTorch" if precision == PYTORCH else (precision or "?").upper()


def _number(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _times(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def _overhead(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:+.0f}%"


@dataclass(frozen=True)
class Column:
    header: str
    width: int
    cell: Callable[[dict], str]
    text: bool = False  # left-aligned


# Groups of columns, separated by " | ": measurements, vs the first row, vs FP32 of the same model.
COLUMNS = (
    (Column("prec", 7, lambda r: precision_label(r["precision"]), text=True),
     Column("device", 6, lambda r: r["device"], text=True),
     Column("exec", 4, lambda r: r["inference_precision"] or "-", text=True),
     Column("compile", 7, lambda r: f"{r['compile_ms']:.0f}"),
     Column("first", 6, lambda r: f"{r['first_inference_ms']:.1f}"),
     Column("median", 6, lambda r: f"{r['latency_ms']['median']:.2f}"),
     Column("p90", 6, lambda r: f"{r['latency_ms']['p90']:.2f}"),
     Column("p99", 6, lambda r: f"{r['latency_ms']['p99']:.2f}"),
     Column("mean", 6, lambda r: f"{r['latency_ms']['mean']:.2f}"),
     Column("fps", 6, lambda r: _number(r["throughput_fps"], ".1f")),
     Column("req", 3, lambda r: _number(r["infer_requests"], "d")),
     Column("GMAC", 5, lambda r: f"{r['gmac']:.3f}"),
     Column("GMAC*", 5, lambda r: f"{r['gmac_star']:.3f}"),
     Column("zeros%", 6, lambda r: f"{100 * r['zero_ratio']:.2f}"),
     Column("count+", 6, lambda r: _overhead(r["counter_overhead"]))),
    (Column("lat x", 6, lambda r: _times(r["vs_first"]["latency"])),
     Column("fps x", 6, lambda r: _times(r["vs_first"]["throughput"])),
     Column("GMAC*x", 6, lambda r: _times(r["vs_first"]["gmac_star"]))),
    (Column("lat x", 6, lambda r: _times((r["vs_fp32"] or {}).get("latency"))),
     Column("fps x", 6, lambda r: _times((r["vs_fp32"] or {}).get("throughput")))),
)


def format_table(report: dict) -> str:
    """The rows side by side: measurements, ratios against the first row, and against the FP32
    IR of the same model (INT8 vs FP32, PyTorch vs FP32)."""
    rows, machine, settings = report["rows"], report["machine"], report["settings"]
    width = max(len("model"), *(len(row["model"]) for row in rows))

    def line(model: str, cell: Callable[[Column], str]) -> str:
        groups = [" ".join(f"{cell(c):<{c.width}}" if c.text else f"{cell(c):>{c.width}}" for c in group)
                  for group in COLUMNS]
        return f"{model:<{width}} " + " | ".join(groups)

    header = line("model", lambda column: column.header)
    measured, vs_first = (sum(c.width + 1 for c in group) - 1 for group in COLUMNS[:2])
    lines = [f"{'':<{width + measured}}  | {'vs first row':<{vs_first}} | vs FP32", header, "-" * len(header)]
    lines += [line(row["model"], lambda column, row=row: column.cell(row)) for row in rows]
    lines += ["", f"ms: compile, first inference, latency (LATENCY hint, 1 request, sync, {settings['frames']} frames, "
                  f">= {settings['duration']:g} s); fps: THROUGHPUT hint, req async requests; exec: execution precision;",
              "GMAC(*): mean per frame; count+: latency cost of the zero counters; x: row / reference (latency, "
              "GMAC*: lower is better; fps: higher is better),",
              f"the reference being the first row ({rows[0]['model']} {precision_label(rows[0]['precision'])}), "
              "then the FP32 IR of the same model on the same device.",
              f"{machine['device_name']}, {machine['cores']} cores (load average {_number(machine['load_average'], '.1f')} "
              f"before the run), OpenVINO {machine['openvino']}, Python {machine['python']}"
              + (f", torch {machine['torch']}" if machine["torch"] else "")]
    return "\n".join(lines)


def format_crop_curve(report: dict) -> str:
    lines = []
    for curve in report["curves"]:
        lines += [f"{curve['model']} ({curve['input_hw'][0]}x{curve['input_hw'][1]}) against {report['reference']} "
                  f"({report['reference_ms']:.2f} ms = 1.00x)",
                  f"  empty frame (OMG only) {curve['omg_ms']:7.2f} ms {curve['omg_ratio']:5.2f}x",
                  f"  dense graph            {curve['dense_ms']:7.2f} ms {curve['dense_ratio']:5.2f}x",
                  "  crop (px)   area   OMG + crop   x vanilla"]
        lines += [f"  {point['crop_hw'][0]:>4}x{point['crop_hw'][1]:<4} {point['area']:6.3f} {point['frame_ms']:9.2f} ms "
                  f"{point['ratio']:8.2f}x" for point in curve["points"]]
    lines += [f"zero inputs, LATENCY hint, 1 request, {report['rounds']} interleaved rounds x {report['calls']} calls; "
              "x vanilla: median of the per-round ratios",
              f"{report['cpu']}, device {report['device']}, load average {_number(report['load_average'], '.1f')} after the run"]
    return "\n".join(lines)


def format_executions(report: dict) -> str:
    """Rows per scene, each with its ratio to the scene's first dense row of the same precision
    (the vanilla model when it is listed first)."""
    width = max(len("model"), *(len(row["model"]) for row in report["rows"]))
    header = (f"{'scene':<6} {'model':<{width}} {'prec':<5} {'exec':<5} {'median':>7} {'mean':>7} {'x ref':>6} "
              f"{'empty%':>6} {'roi%':>5} {'dense%':>6} {'area':>5}")
    lines = [header, "-" * len(header)]
    references: dict[tuple[str, str], dict] = {}
    for row in report["rows"]:
        reference = references.setdefault((row["scene"], row["precision"]), row)
        share = row["share"]
        lines.append(f"{row['scene']:<6} {row['model']:<{width}} {row['precision'].upper():<5} {row['execution']:<5} "
                     f"{row['median_ms']:>7.2f} {row['mean_ms']:>7.2f} {row['median_ms'] / reference['median_ms']:>5.2f}x "
                     f"{100 * share['empty']:>6.0f} {100 * share['roi']:>5.0f} {100 * share['dense']:>6.0f} "
                     f"{row['mean_area']:>5.2f}")
    lines += ["", f"ms per frame (Detector call, LATENCY hint, 1 request), {report['rounds']} interleaved rounds; "
                  "x ref: median / the scene's first row of that precision; empty/roi/dense: how frames ran; "
                  "area: mean crop area (fraction of the frame, 1 for dense)",
              f"{report['cpu']}, device {report['device']}, load average {_number(report['load_average'], '.1f')} after the run"]
    return "\n".join(lines)
