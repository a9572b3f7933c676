"""Where the camera app's frames come from: a camera, a stream, a video file, an image folder or the
demo video, behind one read / reopen interface, so the pipeline treats them alike and a lost live
source can be reopened. Torch-free (cv2, numpy)."""
from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import cv2
import numpy as np

from babo_edge.errors import BaboError
from babo_edge.calibration.errors import ImageReadError
from babo_edge.calibration.images import read_image

DEMO_SOURCE = "demo"
STREAM_SCHEMES = ("rtsp", "rtsps", "rtmp", "http", "https", "udp", "tcp")
STREAM_TIMEOUT_MS = 5000  # a stalled stream fails a read after this long, and is then reopened
RETRIES = 3
BACKOFF_S = 0.5  # waits before reopening a lost live source: 0.5, 1, 2 s


class SourceError(BaboError, ValueError):
    """A frame source that cannot be opened."""


def warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


class Capture(Protocol):
    """What CaptureSource needs of a cv2.VideoCapture (tests pass fakes)."""

    def isOpened(self) -> bool: ...
    def read(self) -> tuple[bool, Any]: ...
    def get(self, prop: int) -> float: ...
    def release(self) -> None: ...


class CaptureSource:
    """A camera, stream or video file. `open_capture` makes a new capture each call, so a live
    source can be reopened after it fails (an unplugged camera, a dropped stream)."""

    def __init__(self, name: str, open_capture: Callable[[], Capture], live: bool):
        self.name, self.live, self._open = name, live, open_capture
        self._capture = open_capture()
        if not self._capture.isOpened():
            raise SourceError(f"cannot open {name}")

    @property
    def fps(self) -> float | None:
        fps = self._capture.get(cv2.CAP_PROP_FPS)
        return fps if 1 <= fps <= 240 else None

    def read(self) -> Any:
        """The next frame, or None when there is none (end of file, or a live failure). A live
        source's empty frame (a camera that "succeeds" with nothing, seen on some USB drivers) is
        a failure too, so the source is reopened rather than skipped frame after frame for ever;
        a file's is passed on (and skipped with a warning by the pipeline)."""
        ok, frame = self._capture.read()
        if ok and self.live and (frame is None or getattr(frame, "size", 0) == 0):
            return None
        return frame if ok else None

    def reopen(self) -> bool:
        self._capture.release()
        self._capture = self._open()
        return self._capture.isOpened()

    def close(self) -> None:
        self._capture.release()


class ImageFolderSource:
    """The files of a folder in name order; a file that is not a readable image is skipped with a
    warning (folders collect stray notes and thumbnails)."""

    live = False
    fps = None

    def __init__(self, folder: Path):
        self.name = f"images {folder}"
        files = sorted(path for path in folder.iterdir() if path.is_file() and not path.name.startswith("."))
        if not files:
            raise SourceError(f"cannot open {self.name}: no files in it")
        self._files = iter(files)

    def read(self) -> np.ndarray | None:
        for path in self._files:
            try:
                return cv2.cvtColor(read_image(path), cv2.COLOR_RGB2BGR)
            except (ImageReadError, OSError) as e:  # OSError: e.g. no read permission
                warn(f"skipped {path.name}: {e}")
        return None

    def reopen(self) -> bool:
        return False

    def close(self) -> None:
        pass


Source = CaptureSource | ImageFolderSource


def open_source(spec: str) -> Source:
    """'0' (camera index), 'rtsp://...' or another stream URL, a video file, a folder of images,
    or 'demo' (the built-in dataset's demo video)."""
    if spec.isdigit():
        return CaptureSource(f"camera {spec}", lambda: open_quietly(int(spec)), live=True)
    if spec.partition("://")[0].lower() in STREAM_SCHEMES:
        return CaptureSource(f"stream {spec}", lambda: open_stream(spec), live=True)
    path = demo_video() if spec == DEMO_SOURCE else Path(spec)
    if path.is_dir():
        return ImageFolderSource(path)
    if not path.exists():
        raise SourceError(f"{spec}: no such file or folder (sources: camera index, video, image folder, "
                          f"stream URL, '{DEMO_SOURCE}')")
    return CaptureSource(f"video {path}", lambda: cv2.VideoCapture(str(path)), live=False)


def default_source() -> Source:
    """Camera 0 if one opens, else the demo video."""
    try:
        return open_source("0")
    except SourceError:
        print("no camera 0: using the built-in demo video")
        return open_source(DEMO_SOURCE)


def open_stream(url: str) -> cv2.VideoCapture:
    """With timeouts: FFmpeg would otherwise wait ~30 s on a dead server or a stalled stream."""
    return open_quietly(url, cv2.CAP_FFMPEG, [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, STREAM_TIMEOUT_MS,
                                              cv2.CAP_PROP_READ_TIMEOUT_MSEC, STREAM_TIMEOUT_MS])


def open_quietly(*args) -> cv2.VideoCapture:
    """cv2.VideoCapture(*args) without OpenCV's warning per backend that cannot open it: a camera or
    stream that is not there is an answer here, reported in one line by the caller."""
    level = cv2.utils.logging.getLogLevel()
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
    try:
        return cv2.VideoCapture(*args)
    finally:
        cv2.utils.logging.setLogLevel(level)


def demo_video() -> Path:
    """The built-in dataset's video.mp4, generated on first use (~30 s). Imported here: the
    generator needs tqdm and pycocotools, which a box that never runs the demo may lack."""
    try:
        from babo_edge.calibration.synthetic import VIDEO_FILE, ensure_default_dataset
    except ImportError as e:
        raise SourceError(f"the demo video is generated by the full install ({e.name} is missing: "
                          f"pip install 'babo-edge[train]'), or pass --source") from None
    return ensure_default_dataset() / VIDEO_FILE


def read_or_reopen(source: Source, retries: int, backoff_s: float, stop: threading.Event) -> Any:
    """The next frame. A live source that fails is reopened up to `retries` times, waiting
    backoff_s, 2 backoff_s, ... first (a camera being replugged, a stream restarting). None: the
    source ended, could not be reopened, or `stop` was set."""
    frame = source.read()
    if frame is not None or not source.live:
        return frame
    for attempt in range(retries):
        delay = backoff_s * 2 ** attempt
        warn(f"{source.name}: no frame; reopening in {delay:g} s (attempt {attempt + 1} of {retries})")
        if stop.wait(delay):
            return None
        if source.reopen() and (frame := source.read()) is not None:
            return frame
    warn(f"{source.name}: still no frame after {retries} attempts; stopping")
    return None
