"""Atomic file writes, the one implementation every stage uses: a reader, a crash or a Ctrl-C
never leaves half a file behind, and the file gets open()'s ordinary permissions."""
from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO


@contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb", fsync: bool = False) -> Iterator[IO]:
    """Yields a file open on a temporary sibling of `path`, renamed onto `path` when the block
    ends without error and removed otherwise. `fsync`: flush to disk before the rename (large
    files that must survive a power cut, e.g. checkpoints)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, mode) as file:
            yield file
            if fsync:
                file.flush()
                os.fsync(file.fileno())
        make_readable(temporary)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def make_readable(path: str | os.PathLike) -> None:
    """The permissions of a file made with open() (0666 less the umask): mkstemp's 0600 would
    hide a report or figure written atomically from everyone else."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(path, 0o666 & ~mask)
