"""The export report: a versioned dataclass whose `asdict` is DIR/export_report.json, and its
printed summary. Written by export.pipeline, read by the CLI and by anyone with the folder."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPORT_FILE = "export_report.json"
REPORT_SCHEMA = "babo-edge/export-report"
# A binarized model's IRs are checked with their binary signs forced to the IR's (export.parity);
# `parity["<precision>" + FREE_SIGNS]` is the same comparison with each side's own signs, reported.
FREE_SIGNS = "_free_signs"
REPORT_VERSION = 2  # 2: accuracy rows are train.evaluation.EvaluationReport
AP_DROP_TARGET = 0.5  # AP points, INT8 vs FP32 (issue target on the demo checkpoint)
MASK_IOU_TARGET = 0.98


@dataclass
class ExportReport:
    """What one export did. `seconds` per stage (and "total"); `files` relative path -> bytes;
    `parity` per artifact (export.parity.Parity.as_dict) and the tolerance `failures` it broke;
    `accuracy` the FP32 / INT8 IRs on the val split (EvaluationReport rows), None if skipped."""
    checkpoint: str
    model: dict
    options: dict
    tolerances: dict
    versions: dict
    seconds: dict[str, float] = field(default_factory=dict)
    files: dict[str, int] = field(default_factory=dict)
    parity: dict[str, dict] = field(default_factory=dict)
    failures: dict[str, list[str]] = field(default_factory=dict)
    quantization: dict | None = None
    accuracy: dict | None = None
    ovms: dict | None = None
    schema: str = REPORT_SCHEMA
    version: int = REPORT_VERSION

    def write(self, folder: Path) -> Path:
        path = folder / REPORT_FILE
        path.write_text(json.dumps(asdict(self), indent=2) + "\n", encoding="utf-8")
        return path


def format_summary(report: ExportReport) -> str:
    """The printed summary: stages, files, parity, accuracy and MAC*."""
    mb = 1 << 20
    labels = {name: _parity_label(name, parity) for name, parity in report.parity.items()}
    width = max([18, *map(len, labels.values())])
    lines = ["stages: " + ", ".join(f"{stage} {seconds:.1f} s" for stage, seconds in report.seconds.items()),
             "files: " + ", ".join(f"{name} {size / mb:.1f} MB" for name, size in report.files.items()
                                   if name.endswith((".onnx", ".bin")) and not name.startswith("ovms/")),
             f"OVMS: {report.ovms['config']} serves {report.ovms['name']} ({report.ovms['precision']})",
             "",
             f"{'parity':<{width}} {'detections':>11} {'max|score|':>10} {'max|box|px':>10} {'mask IoU':>8} "
             f"{'px differ':>9} {'ok':>3}"]
    for name, parity in report.parity.items():
        lines.append(f"{labels[name]:<{width}} {parity['candidate_detections']:>5}/{parity['reference_detections']:<5} "
                     f"{parity['max_score_diff']:>10.2e} {parity['max_box_diff']:>10.2e} {parity['mask_iou']:>8.4f} "
                     f"{parity['mask_mismatches']:>9} {'no' if name in report.failures else 'yes':>3}")
    accuracy = report.accuracy
    if accuracy:
        lines += ["", f"accuracy on {accuracy['ann_file']} ({accuracy['images']} images)",
                  f"{'model':<8} {'AP':>5} {'AP50':>5} {'FG%':>5} {'recall%':>7} {'mask IoU':>8} {'zeros%':>6} "
                  f"{'OD zeros%':>9} {'GMAC':>6} {'GMAC*':>6}"]
        for name in ("fp32", "int8"):
            if name not in accuracy:
                continue
            result = accuracy[name]
            recall = result["instance_recall"]
            lines.append(
                f"{name.upper() + ' IR':<8} {result['metrics']['AP']:>5.1f} {result['metrics']['AP50']:>5.1f} "
                f"{_percent(result['fg_ratio']):>5} {_percent(recall and recall['overall']):>7} "
                f"{'-' if result['mask_iou'] is None else format(result['mask_iou'], '.4f'):>8} "
                f"{100 * result['zero_ratio']:>6.2f} {100 * result['od_zero_ratio']:>9.2f} "
                f"{result['gmac']:>6.3f} {result['gmac_star']:>6.3f}")
        if "ap_drop" in accuracy:
            iou = accuracy["mask_iou"]
            lines.append(f"INT8 vs FP32: AP drop {accuracy['ap_drop']:.2f} (target <= {AP_DROP_TARGET}), "
                         + ("no mask" if iou is None else f"mask IoU {iou:.4f} (target >= {MASK_IOU_TARGET})"))
    return "\n".join(lines)


def _parity_label(name: str, parity: dict) -> str:
    against = "FP32 IR" if name == "int8" else "PyTorch"
    label = f"{name.removesuffix(FREE_SIGNS).upper():<5}vs {against}"
    if name.endswith(FREE_SIGNS):
        return label + ", own signs"
    flips = parity.get("sign_flips", 0)
    return label + f", IR signs ({flips} flip{'' if flips == 1 else 's'})" if parity.get("sign_inputs") else label


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"
