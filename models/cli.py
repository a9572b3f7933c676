"""Small helpers shared by the command-line scripts (argument types, atomic JSON output)."""
from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path


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
    """Atomic JSON write: temporary file in the target folder, then rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        make_readable(tmp)
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def make_readable(path: str | os.PathLike) -> None:
    """The permissions of a file made with open() (0666 less the umask): mkstemp's 0600 would
    hide a report or figure written atomically from everyone else."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(path, 0o666 & ~mask)
