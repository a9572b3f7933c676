"""The camera app's outputs: a path checked writable before a long session starts (video, report,
plot), and a video that appears only once complete (a Ctrl-C or a full disk leaves no half-written
file). Torch-free (cv2, numpy)."""
from __future__ import annotations

import os
import secrets
import shutil
from pathlib import Path

import cv2
import numpy as np

from babo_edge.errors import BaboError


class OutputError(BaboError, ValueError):
    """An output (video, report, plot) that cannot be written."""


def check_writable(path: Path) -> None:
    """Fails now rather than after a long session: the folder exists (or is made) and is writable."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(f"cannot write {path}: {e.strerror}") from None
    if path.is_dir() or not os.access(path.parent, os.W_OK):
        raise OutputError(f"cannot write {path}: {'a folder' if path.is_dir() else 'folder not writable'}")


def pad_to_even(image: np.ndarray) -> np.ndarray:
    """mp4v encodes even sides only (OpenCV would crop odd frames): a black row / column is added."""
    height, width = image.shape[:2]
    if height % 2 == 0 and width % 2 == 0:
        return image
    return cv2.copyMakeBorder(image, 0, height % 2, 0, width % 2, cv2.BORDER_CONSTANT, value=0)


class AtomicVideoWriter:
    """An mp4v video written to a hidden temporary file beside `path` and renamed by close(), so
    `path` is never a half-written video; discard() removes it. The first frame sets the size
    (odd sides padded to even); later frames of another size (image folders) are resized to it."""

    def __init__(self, path: str | os.PathLike, fps: float):
        self.path, self.fps = Path(path), fps
        check_writable(self.path)
        self._writer: cv2.VideoWriter | None = None
        self._temporary: Path | None = None
        self._size: tuple[int, int] | None = None
        self._written = 0

    def write(self, image: np.ndarray) -> None:
        image = pad_to_even(image)
        if self._writer is None:
            self._open((image.shape[1], image.shape[0]))
        if (image.shape[1], image.shape[0]) != self._size:
            image = cv2.resize(image, self._size, interpolation=cv2.INTER_AREA)
        self._writer.write(image)
        self._written += 1

    def close(self) -> Path | None:
        """Finishes and publishes the video; None when no frame was written (nothing published).
        OpenCV's encoder does not report failed writes (a full disk): the finished file is read
        back and published only if it holds every frame, else removed with an OutputError."""
        if self._writer is None:
            return None
        self._writer.release()
        self._writer = None
        found = video_frame_count(self._temporary)
        if found != self._written:
            self._temporary.unlink(missing_ok=True)
            free = shutil.disk_usage(self.path.parent).free
            raise OutputError(f"cannot write {self.path}: the encoded file holds {found} of {self._written} frames "
                              f"({free // 2**20} MB free{': disk full' if free < 2**20 else ''}); nothing published")
        os.replace(self._temporary, self.path)
        return self.path

    def discard(self) -> None:
        if self._writer is not None:
            self._writer.release()
            self._writer = None
            self._temporary.unlink(missing_ok=True)

    def _open(self, size: tuple[int, int]) -> None:
        # Named, not made, here: the encoder creates it with the usual permissions; the suffix
        # picks the container.
        self._temporary = self.path.with_name(f".{self.path.name}.{secrets.token_hex(4)}{self.path.suffix or '.mp4'}")
        self._size = size
        self._writer = cv2.VideoWriter(str(self._temporary), cv2.VideoWriter_fourcc(*"mp4v"), self.fps, size)
        if not self._writer.isOpened():
            self._writer = None
            self._temporary.unlink(missing_ok=True)
            raise OutputError(f"cannot write {self.path}: OpenCV has no mp4v encoder for {size[0]}x{size[1]}")


def video_frame_count(path: Path) -> int:
    """Frames the container of `path` says it holds; 0 when it cannot be opened (e.g. an mp4 whose
    index, written last, did not fit on the disk)."""
    capture = cv2.VideoCapture(str(path))
    try:
        return int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) if capture.isOpened() else 0
    finally:
        capture.release()
