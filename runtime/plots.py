"""Figures of MAC/MAC* reports (models.accounting schema) and of the crop latency curve, drawn with matplotlib's Agg canvas.

matplotlib is imported when a figure is drawn, not with the module: the runtime must start on
boxes without it. The Agg canvas is used directly, so no global pyplot backend is switched.
"""
from __future__ import annotations

import os
from pathlib import Path

from babo_edge.files import atomic_write

DETECTOR = "od"


def block_zero_percent(report: dict, network: str = DETECTOR) -> dict[str, float]:
    """{block: zeros% of its conv inputs}, blocks in execution order."""
    if network not in report["networks"]:
        raise ValueError(f"the report has no {network!r} network (has {sorted(report['networks'])})")
    return {block["name"]: 100 * block["zero_ratio"] for block in report["networks"][network]["blocks"]}


def plot_block_zeros(report: dict, path: str | os.PathLike, other: dict | None = None,
                     labels: tuple[str, str] = ("BABO", "vanilla")) -> Path:
    """PNG of `block_zeros_figure`, written atomically so a reader never sees half a file."""
    return _save_atomically(block_zeros_figure(report, other, labels), Path(path))


def block_zeros_figure(report: dict, other: dict | None = None, labels: tuple[str, str] = ("BABO", "vanilla")):
    """Bar chart of the detector's zeros% per block (the paper's Fig. 5), with `other`'s bars
    beside them when given (a block only one report has gets one bar): a matplotlib Figure."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    series = [block_zero_percent(report)] + ([block_zero_percent(other)] if other is not None else [])
    blocks = list(dict.fromkeys(name for values in series for name in values))
    width = 0.8 / len(series)
    figure = Figure(figsize=(max(6.0, 0.45 * len(blocks) + 2), 4.5), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    for k, (values, label) in enumerate(zip(series, labels)):
        offsets = [i + (k - (len(series) - 1) / 2) * width for i in range(len(blocks))]
        axes.bar(offsets, [values.get(name, float("nan")) for name in blocks], width, label=label)
    axes.set_xticks(range(len(blocks)), [_short(name) for name in blocks], rotation=60, ha="right", fontsize=8)
    axes.set_ylabel("zeros in conv inputs (%)")
    axes.set_ylim(0, 100)
    axes.set_title(f"Detector activation sparsity per block ({report['images']} images)")
    axes.legend()
    return figure


def plot_crop_curve(report: dict, path: str | os.PathLike) -> Path:
    """PNG of `crop_curve_figure`, written atomically."""
    return _save_atomically(crop_curve_figure(report), Path(path))


def crop_curve_figure(report: dict):
    """Latency against crop area (runtime.latency.crop_latency_curve): per BABO model the OMG +
    crop curve, its dense graph and its empty frame, all as ratios to the vanilla reference (1)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6.5, 4.5), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    axes.axhline(1.0, color="black", linewidth=1, label=f"{report['reference']} (dense)")
    for curve in report["curves"]:
        areas = [0.0] + [point["area"] for point in curve["points"]]
        ratios = [curve["omg_ratio"]] + [point["ratio"] for point in curve["points"]]
        line, = axes.plot(areas, ratios, marker="o", label=f"{curve['model']}: OMG + crop (area 0: empty frame)")
        axes.axhline(curve["dense_ratio"], color=line.get_color(), linestyle="--", label=f"{curve['model']}: dense graph")
    axes.set_xlabel("crop area (fraction of the input)")
    axes.set_ylabel("latency / vanilla")
    axes.set_xlim(0, 1.02)
    axes.set_ylim(bottom=0)
    axes.set_title("ROI execution: latency against crop area", fontsize=10)
    axes.legend(fontsize=7)
    return figure


def _short(block: str) -> str:
    """'od.backbone.stages.3' -> 'backbone.stages.3': every detector block has the prefix."""
    return block.removeprefix(f"{DETECTOR}.")


def _save_atomically(figure, path: Path) -> Path:
    with atomic_write(path, "wb") as file:
        figure.savefig(file, format="png", dpi=120)
    return path
