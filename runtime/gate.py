"""The regression gate of benchmark.py --baseline: rows are matched with a baseline report's by
(model, precision, device), and a median latency above it or a throughput below it by more than
the allowed fraction fails. A baseline is checked whole first, so a corrupt one is a one-line
BenchmarkError rather than a KeyError halfway through."""
from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from babo_edge.runtime.latency import SCHEMA, VERSION, BenchmarkError
from babo_edge.runtime.latency_table import precision_label

ROW_KEY = ("model", "precision", "device")


@dataclass(frozen=True)
class Gate:
    metric: str
    unit: str
    value: Callable[[dict], float | None]
    higher_is_worse: bool


GATES = (Gate("median latency", "ms", lambda row: row["latency_ms"]["median"], True),
         Gate("throughput", "frames/s", lambda row: row.get("throughput_fps"), False))


def row_label(row: dict) -> str:
    return f"{row['model']} {precision_label(row['precision'])} on {row['device']}"


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0


def baseline_row_problem(row) -> str | None:
    """What makes `row` unusable as a baseline row (None: usable). Throughput may be None (PyTorch rows)."""
    if not isinstance(row, dict) or not all(isinstance(row.get(key), str) for key in ROW_KEY):
        return f"lacks {'/'.join(ROW_KEY)}"
    latency = row.get("latency_ms")
    if not isinstance(latency, dict) or not _is_number(latency.get("median")):
        return f"({row_label(row)}) has no valid latency_ms median"
    if row.get("throughput_fps") is not None and not _is_number(row["throughput_fps"]):
        return f"({row_label(row)}) has an invalid throughput_fps {row['throughput_fps']!r}"
    return None


def check_baseline(data, source: str) -> dict:
    """`data` if it is a benchmark report with usable rows, else a one-line BenchmarkError saying why."""
    if not isinstance(data, dict) or (data.get("schema"), data.get("version")) != (SCHEMA, VERSION):
        found = (f"schema {data.get('schema')!r} version {data.get('version')!r}" if isinstance(data, dict)
                 else f"a JSON {type(data).__name__}")
        raise BenchmarkError(f"baseline {source}: not a {SCHEMA} version {VERSION} report ({found})")
    rows = data.get("rows")
    if not isinstance(rows, list) or not rows:
        raise BenchmarkError(f"baseline {source}: no rows")
    for i, row in enumerate(rows):
        problem = baseline_row_problem(row)
        if problem:
            raise BenchmarkError(f"baseline {source}: row {i} {problem}")
    return data


def read_baseline(path: Path) -> dict:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as e:
        raise BenchmarkError(f"baseline {path}: cannot read it ({e.strerror or e})") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BenchmarkError(f"baseline {path}: not a JSON file ({e})") from None
    return check_baseline(data, str(path))


def other_machine(baseline: dict, report: dict) -> str | None:
    """Why `baseline` may not be comparable (measured on another device or OpenVINO), or None.
    Timings only compare on one machine: a baseline belongs to one runner."""
    before, now = baseline.get("machine") or {}, report["machine"]
    differences = [f"{key} {before.get(key)!r} (now {now[key]!r})" for key in ("device_name", "cores", "openvino")
                   if before.get(key) != now[key]]
    return "the baseline was measured with " + ", ".join(differences) if differences else None


@dataclass(frozen=True)
class Comparison:
    regressions: list[str]  # one line per regressed metric
    not_in_baseline: list[str]  # one line per row the baseline lacks (reported, not failed)


def compare_to_baseline(rows: Sequence[dict], baseline: Sequence[dict], max_regression: float) -> Comparison:
    """Rows matched by (model, precision, device): a regression is a median latency more than
    `max_regression` (a fraction) above the baseline's, or a throughput more than it below."""
    reference = {tuple(row[key] for key in ROW_KEY): row for row in baseline}
    regressions, missing = [], []
    for row in rows:
        base = reference.get(tuple(row[key] for key in ROW_KEY))
        if base is None:
            missing.append(f"{row_label(row)}: not in the baseline, not compared")
            continue
        for gate in GATES:
            current, before = gate.value(row), gate.value(base)
            if current is None or before is None:
                continue
            change = current / before - 1
            worse = change > max_regression if gate.higher_is_worse else change < -max_regression
            if worse:
                regressions.append(f"{row_label(row)}: {gate.metric} {current:.2f} {gate.unit} vs {before:.2f} in the "
                                   f"baseline ({change:+.1%}, limit {'+' if gate.higher_is_worse else '-'}"
                                   f"{max_regression:.0%})")
    return Comparison(regressions, missing)
