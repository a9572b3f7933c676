"""Small helpers shared by the command-line scripts (argument types, atomic JSON output)."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from babo_edge.files import atomic_write


def parse_size(text: str) -> tuple[int, int]:
    """'512' -> (512, 512); '800x1216' -> (800, 1216) as height x width."""
    try:
        parts = [int(p) for p in text.lower().split("x")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must be N or HxW, got {text!r}") from None
    if len(parts) == 1:
        parts *= 2
    if len(parts) != 2 or min(parts) < 32:
        raise argparse.ArgumentTypeError(f"size must be N or HxW with sides >= 32, got {text!r}")
    return parts[0], parts[1]


def choice_list(choices: tuple[str, ...], what: str):
    """Argument type: a comma list of `choices` ('fp32,INT8' -> ('fp32', 'int8')), duplicates dropped."""
    def parse(text: str) -> tuple[str, ...]:
        chosen = tuple(dict.fromkeys(p.strip().lower() for p in text.split(",") if p.strip()))
        if not chosen or any(p not in choices for p in chosen):
            raise argparse.ArgumentTypeError(f"{what} are a comma list of {', '.join(choices)}; got {text!r}")
        return chosen
    return parse


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def write_json(path: Path, data) -> None:
    """Atomic JSON write (babo_edge.files.atomic_write)."""
    with atomic_write(path, "w") as file:
        json.dump(data, file, indent=1)
