"""Where an export puts its IRs: the one layout export/ writes and runtime/ reads
(a contract of both, so export/ does not import runtime/ for it).

    <checkpoint stem>_ir/FP32/model.xml, .../FP16/model.xml, .../INT8/model.xml

Torch-free (standard library only), so the runtime can find models on a box without torch.
"""
from __future__ import annotations

import os
from pathlib import Path

PRECISIONS = ("fp32", "fp16", "int8")
IR_FILE = "model.xml"
EXPORT_SUFFIX = "_ir"
REPO = Path(__file__).resolve().parents[1]
ZOO = REPO / "models" / "zoo"


def ir_path(export_dir: str | os.PathLike, precision: str) -> Path:
    """The IR of `precision` in an export folder."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown IR precision {precision!r} (one of {', '.join(PRECISIONS)})")
    return Path(export_dir) / precision.upper() / IR_FILE


def default_export_dir(checkpoint: str | os.PathLike) -> Path:
    """Where `export/to_ir.py CHECKPOINT` writes by default: beside the checkpoint."""
    checkpoint = Path(checkpoint)
    return checkpoint.with_name(checkpoint.stem + EXPORT_SUFFIX)
