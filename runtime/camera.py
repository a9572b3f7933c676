"""The camera app's library: frame sources, the overlapped capture -> inference -> drawing pipeline,
the overlay and atomic outputs. Torch-free (openvino, numpy, cv2, the standard library and the
project's torch-free modules), so it runs on the edge box.

Threads: a capture thread reads frames and submits them to the Detector's asynchronous requests;
OpenVINO threads run them and hand the results, in capture order, to a queue; the caller's thread
(`run`) counts, draws, shows and writes them. Capture of frame n+1, inference of frame n and
drawing of frame n-1 overlap.

Bounded: at most `num_requests` frames are in flight (submitted, not yet taken by the drawing
side), so a submitted frame finds a free request and its latency is its own: preprocessing,
inference (on a single-stream device, after the other request's frame), post-processing. At
that bound a file or folder source waits (every frame is processed, at the pipeline's pace) and a
live source (camera, stream) drops the new frame instead, so what is shown stays current;
dropped frames are counted in the report. 2 requests (the default) overlap the capture and
preprocessing of a frame with the inference of the previous one: more FPS; 1 gives the lowest
latency.

Live GMAC*: the model is compiled `instrument`ed (runtime/sparsity.py), so every request also
returns the zeros at each conv input, kept on its results (`keep_outputs`) for the drawing
side's `SparsityCounter`. With ROI / auto execution (runtime.sparse) the detector runs on sub-models
cut from the IR, which carry no counters: the overlay shows the path each frame took and its crop
instead, and the report has the timings and how often each path ran.
"""
from __future__ import annotations

import contextlib
import os
import queue
import secrets
import shutil
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import cv2
import numpy as np
import openvino as ov

from babo_edge.errors import BaboError
from babo_edge.calibration.errors import ImageReadError
from babo_edge.calibration.images import read_image
from babo_edge.models.accounting import LayerCount, conv_macs
from babo_edge.runtime.detector import Detector, FrameError, ModelError, Result
from babo_edge.runtime.sparsity import SparsityCounter, instrument

DEMO_SOURCE = "demo"
STREAM_SCHEMES = ("rtsp", "rtsps", "rtmp", "http", "https", "udp", "tcp")
STREAM_TIMEOUT_MS = 5000  # a stalled stream fails a read after this long, and is then reopened
RETRIES = 3
BACKOFF_S = 0.5  # waits before reopening a lost live source: 0.5, 1, 2 s
DEFAULT_VIDEO_FPS = 15.0  # for output videos of sources that do not say (cameras often report 0)
STATUS_EVERY_S = 5.0
# The IR's confidence_threshold (0.05) keeps the low scores COCO AP needs; a display wants the sure ones.
DISPLAY_THRESHOLD = 0.5
WINDOW = "babo-edge"
TINT_BGR = (110, 40, 0)  # dark blue over the blacked-out background
TINT_STRENGTH = 0.55
PALETTE_BGR = ((56, 56, 255), (31, 112, 255), (29, 178, 255), (49, 210, 207), (10, 249, 72),
               (187, 212, 0), (255, 194, 0), (255, 56, 132), (200, 149, 255), (133, 0, 82))


class SourceError(BaboError, ValueError):
    """A frame source that cannot be opened."""


class OutputError(BaboError, ValueError):
    """An output (video, report, plot) that cannot be written."""


def warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


# --- sources ---

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


# --- inference ---

def instrumented(model: ov.Model) -> ov.Model:
    try:
        return instrument(model)
    except ValueError as e:
        raise ModelError(f"model {model.get_friendly_name()!r}: {e}") from None


@dataclass(frozen=True)
class Submitted:
    """What travels with a frame through the requests."""

    index: int
    frame: Any
    submitted_at: float  # time.perf_counter()


@dataclass(frozen=True)
class Delivered:
    submitted: Submitted
    result: Result
    delivered_at: float

    @property
    def latency_s(self) -> float:
        """Per-frame inference latency: preprocessing, inference, post-processing and the wait
        for earlier frames (results come in order)."""
        return self.delivered_at - self.submitted.submitted_at


@dataclass(frozen=True)
class _Ended:
    error: BaseException | None


class Pipeline:
    """Capture thread -> asynchronous requests -> results in capture order for `deliveries()`.

    `request_stop()` (Ctrl-C, a closed window) ends capturing; the frames in flight are still
    delivered, then `deliveries()` ends. `ended` says why capturing stopped.
    """

    def __init__(self, model: ov.Model, source: Source, device: str = "CPU", *, hint: str = "LATENCY",
                 num_requests: int = 2, score_threshold: float | None = DISPLAY_THRESHOLD,
                 config: Mapping[str, Any] | None = None, max_frames: int | None = None, retries: int = RETRIES,
                 backoff_s: float = BACKOFF_S, core: ov.Core | None = None, execution: str = "dense",
                 counters: bool = True):
        """`score_threshold`: None for the IR's confidence_threshold. `execution`: see
        runtime.detector.Detector; only "dense" has the zero counters (`counter`, else None), and
        only with `counters` (False: the plain IR, faster, no GMAC*)."""
        self.source, self.max_frames, self.retries, self.backoff_s = source, max_frames, retries, backoff_s
        counted = counters and execution == "dense"
        self.detector = Detector.from_model(instrumented(model) if counted else model, device, hint=hint,
                                            num_requests=num_requests, score_threshold=score_threshold, config=config,
                                            core=core, callback=self._on_result, keep_outputs=counted,
                                            execution=execution)
        self.counter = SparsityCounter.from_model(model) if counted else None
        self.dropped = 0
        self.ended: str | None = None
        self._slots = threading.BoundedSemaphore(self.detector.num_requests)
        self._results: queue.Queue[Delivered | _Ended] = queue.Queue()  # bounded by the slots
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._finished = False

    def start(self) -> None:
        self._thread = threading.Thread(target=self._capture, name="capture", daemon=True)
        self._thread.start()

    def request_stop(self) -> None:
        self._stop.set()

    def deliveries(self) -> Iterator[Delivered]:
        """Results in capture order until capturing ends; raises what failed in the capture thread."""
        while not self._finished:
            item = self._results.get()
            if isinstance(item, _Ended):
                self._finished = True
                if item.error is not None:
                    raise item.error
                return
            self._slots.release()
            yield item

    def close(self) -> None:
        """Stops capturing, discards the frames still in flight, closes the source."""
        self.request_stop()
        while self._thread is not None and not self._finished:
            item = self._results.get()
            self._finished = isinstance(item, _Ended)
            if not self._finished:
                self._slots.release()
        if self._thread is not None:
            self._thread.join()
        self.source.close()

    def _on_result(self, submitted: Submitted, result: Result) -> None:
        """Detector callback (OpenVINO thread, capture order): must not block."""
        self._results.put(Delivered(submitted, result, time.perf_counter()))

    def _capture(self) -> None:
        error = None
        try:
            self.ended = self._submit_frames()
        except BaseException as e:  # raised again in the drawing thread by deliveries()
            error = e
        try:
            self.detector.wait_all()
        except Exception as e:
            error = error or e
        self._results.put(_Ended(error))

    def _submit_frames(self) -> str:
        """Reads and submits until the source ends; returns why it stopped."""
        submitted = read = 0
        while not self._stop.is_set():
            if self.max_frames is not None and submitted >= self.max_frames:
                return "max frames"
            frame = read_or_reopen(self.source, self.retries, self.backoff_s, self._stop)
            if frame is None:
                break
            read += 1
            if not self._take_slot(wait=not self.source.live):
                if self._stop.is_set():
                    break
                self.dropped += 1
                continue
            try:
                self.detector.infer_async(frame, Submitted(submitted, frame, time.perf_counter()))
            except FrameError as e:
                self._slots.release()
                warn(f"{self.source.name}: frame {read} skipped: {e}")
                continue
            submitted += 1
        if self._stop.is_set():
            return "stopped"
        return "source lost" if self.source.live else "end of source"

    def _take_slot(self, wait: bool) -> bool:
        """A free slot; waits for one (checking for a stop request) when `wait`."""
        if not wait:
            return self._slots.acquire(blocking=False)
        while not self._stop.is_set():
            if self._slots.acquire(timeout=0.1):
                return True
        return False


# --- drawing ---

def to_bgr(frame: np.ndarray) -> np.ndarray:
    """A new BGR copy of a gray (H, W) / (H, W, 1), BGR or BGRA frame, to draw on."""
    if frame.ndim == 2 or frame.shape[2] == 1:
        return cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR)
    if frame.shape[2] == 4:
        return cv2.cvtColor(frame, cv2.COLOR_BGRA2BGR)
    return frame.copy()


def tint_background(image: np.ndarray, mask: np.ndarray) -> None:
    """Blends the pixels the mask blacks out (mask == 0) with TINT_BGR, in place."""
    tinted = cv2.addWeighted(image, 1 - TINT_STRENGTH, np.full_like(image, TINT_BGR), TINT_STRENGTH, 0)
    np.copyto(image, tinted, where=(mask == 0)[..., None])


def text_scale(image: np.ndarray) -> tuple[float, int]:
    """Font scale and thickness readable on small and large frames alike."""
    scale = max(0.35, min(image.shape[:2]) / 800)
    return scale, max(1, round(2 * scale))


def put_label(image: np.ndarray, text: str, origin: tuple[int, int], color: tuple[int, int, int]) -> int:
    """`text` on a filled box whose top-left corner is `origin`; returns the box height."""
    scale, thickness = text_scale(image)
    (width, height), baseline = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
    x, y = origin
    box_height = height + baseline + 4
    cv2.rectangle(image, (x, y), (x + width + 4, y + box_height), color, cv2.FILLED)
    ink = (0, 0, 0) if sum(color) > 380 else (255, 255, 255)
    cv2.putText(image, text, (x + 2, y + height + 2), cv2.FONT_HERSHEY_SIMPLEX, scale, ink, thickness, cv2.LINE_AA)
    return box_height


def draw_detections(image: np.ndarray, result: Result) -> None:
    scale, thickness = text_scale(image)
    label_height = cv2.getTextSize("Ag", cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)[0][1] + 8
    for box, label, name, score in zip(result.boxes, result.labels, result.label_names, result.scores):
        color = PALETTE_BGR[int(label) % len(PALETTE_BGR)]
        x1, y1, x2, y2 = (int(round(v)) for v in box)
        cv2.rectangle(image, (x1, y1), (x2, y2), color, thickness)
        put_label(image, f"{name} {score:.2f}", (x1, max(0, y1 - label_height)), color)


def draw(frame: np.ndarray, result: Result, hud: list[str]) -> np.ndarray:
    """The annotated BGR frame: tinted background, the ROI crop (a thin white frame), boxes
    with label and score, `hud` lines top left."""
    image = to_bgr(frame)
    mask = result.mask_at_frame_size()
    if mask is not None:
        tint_background(image, mask)
    if result.roi is not None:
        x1, y1, x2, y2 = (int(round(v)) for v in result.roi)
        cv2.rectangle(image, (x1, y1), (x2 - 1, y2 - 1), (255, 255, 255), 1)
    draw_detections(image, result)
    y = 0
    for line in hud:
        y += put_label(image, line, (0, y), (32, 32, 32))
    return image


# --- running statistics ---

def frame_mac_star(counts: list[LayerCount]) -> float:
    return sum(conv_macs(count.layer, count.zeros) for count in counts)


class Stats:
    """FPS, inference latency and GMAC* of the frames drawn so far (recent and mean)."""

    def __init__(self, mac: float, window: int = 30):
        self.mac = mac
        self.frames = 0
        self._recent: deque[float] = deque(maxlen=window)  # delivery times
        self._first_submitted: float | None = None
        self._latency_sum = self._mac_star_sum = 0.0
        self.latency_s = self.mac_star = 0.0
        self.executions: dict[str, int] = {}  # frames per path (dense, roi, empty)
        self.execution, self.counted = "dense", True

    def add(self, delivered: Delivered, mac_star: float | None) -> None:
        """`mac_star` None: no counters (sparse execution); the path the frame took is counted."""
        if self._first_submitted is None:
            self._first_submitted = delivered.submitted.submitted_at
        self.frames += 1
        self.executions[delivered.result.execution] = self.executions.get(delivered.result.execution, 0) + 1
        self.execution = delivered.result.execution
        self.counted = mac_star is not None
        mac_star = mac_star or 0.0
        self._recent.append(delivered.delivered_at)
        self.latency_s, self.mac_star = delivered.latency_s, mac_star
        self._latency_sum += delivered.latency_s
        self._mac_star_sum += mac_star

    @property
    def fps(self) -> float:
        """Over the last `window` frames: what the pipeline does now."""
        spent = self._recent[-1] - self._recent[0] if len(self._recent) > 1 else 0.0
        return (len(self._recent) - 1) / spent if spent > 0 else 0.0

    @property
    def mean_fps(self) -> float:
        """Frames over the time from the first submission to the last result."""
        spent = self._recent[-1] - self._first_submitted if self.frames else 0.0
        return self.frames / spent if spent > 0 else 0.0

    @property
    def mean_latency_s(self) -> float:
        return self._latency_sum / self.frames if self.frames else 0.0

    @property
    def mean_mac_star(self) -> float:
        return self._mac_star_sum / self.frames if self.frames else 0.0

    def hud(self, fg_ratio: float | None) -> list[str]:
        fg = "" if fg_ratio is None else f"  FG {100 * fg_ratio:.0f}%"
        second = (f"GMAC* {self.mac_star / 1e9:.3f} (mean {self.mean_mac_star / 1e9:.3f}) of {self.mac / 1e9:.3f}"
                  if self.counted else f"exec {self.execution}")
        return [f"{self.fps:.1f} FPS  latency {1000 * self.latency_s:.0f} ms", second + fg]

    def status(self) -> str:
        work = (f"GMAC* {self.mean_mac_star / 1e9:.3f} of {self.mac / 1e9:.3f}" if self.counted else
                "ran " + ", ".join(f"{path} {count}" for path, count in sorted(self.executions.items())))
        return f"frame {self.frames}: {self.fps:.1f} FPS, latency {1000 * self.latency_s:.0f} ms, {work}"


# --- outputs ---

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


# --- the window ---

def display_available() -> bool:
    """A window can open: OpenCV has a GUI backend (opencv-python-headless has none) and, on Linux,
    there is a display server to show it on."""
    gui = next((line.split(":", 1)[1].strip() for line in cv2.getBuildInformation().splitlines()
                if line.strip().startswith("GUI:")), "NONE")
    if gui.upper() == "NONE":
        return False
    return not sys.platform.startswith("linux") or bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


class Window:
    def show(self, image: np.ndarray) -> bool:
        """Shows `image`; False once the user pressed q or Esc or closed the window."""
        cv2.imshow(WINDOW, image)
        key = cv2.waitKey(1) & 0xFF
        return key not in (ord("q"), 27) and cv2.getWindowProperty(WINDOW, cv2.WND_PROP_VISIBLE) >= 1

    def close(self) -> None:
        cv2.destroyAllWindows()


# --- the session ---

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextlib.contextmanager
def stop_on_signals(stop: Callable[[], None]) -> Iterator[None]:
    """The first Ctrl-C (SIGINT) or SIGTERM (kill, systemd, docker stop) calls `stop` (capture
    ends, the frames in flight are still drawn and written: a clean end); a second one of either
    raises KeyboardInterrupt (abort: the video is discarded). The handlers before are restored on
    exit. Signals reach the main thread only, so elsewhere this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signum: signal.getsignal(signum) for signum in STOP_SIGNALS}
    stopping = False

    def on_signal(signum, frame):
        nonlocal stopping
        if stopping:
            raise KeyboardInterrupt
        stopping = True
        print(f"\nstopping ({signal.Signals(signum).name}): finishing the frames in flight (Ctrl-C again to abort)",
              file=sys.stderr)
        stop()

    for signum in STOP_SIGNALS:
        signal.signal(signum, on_signal)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


@dataclass(frozen=True)
class Session:
    frames: int
    dropped: int
    ended: str  # "end of source", "source lost", "max frames" or "stopped" (Ctrl-C, SIGTERM, window closed)
    fps: float
    mean_latency_ms: float
    video: Path | None
    report: dict | None  # models.accounting schema ({"meta"} only without counters); None: no frame processed
    video_error: str | None = None  # why `output` was not published (e.g. disk full); the report is still made


def run(pipeline: Pipeline, *, output: str | os.PathLike | None = None, show: bool = False,
        meta: Mapping[str, Any] | None = None, status_every_s: float = STATUS_EVERY_S,
        on_frame: Callable[[Delivered], None] | None = None) -> Session:
    """Runs `pipeline` to its end: counts, draws, shows (`show`) and writes (`output`) every frame;
    without a window, prints a status line every `status_every_s`. `on_frame` sees every delivered
    frame once drawn (benchmarks/soak.py records latency and memory). The report's meta is `meta`
    plus this run's figures. A second Ctrl-C or SIGTERM (KeyboardInterrupt) or an error discards
    the video; a video that could not be finished (disk full) is removed and named in
    `video_error`, the report is still made."""
    writer = window = None
    counter = pipeline.counter
    stats = Stats(mac=sum(conv_macs(layer) for layer in counter.layers) if counter else 0.0)
    last_status = time.perf_counter()
    try:
        writer = AtomicVideoWriter(output, pipeline.source.fps or DEFAULT_VIDEO_FPS) if output else None
        window = Window() if show else None
        with stop_on_signals(pipeline.request_stop):
            pipeline.start()
            for delivered in pipeline.deliveries():
                stats.add(delivered, frame_mac_star(counter.add(delivered.result.outputs)[0]) if counter else None)
                image = draw(delivered.submitted.frame, delivered.result, stats.hud(delivered.result.fg_ratio))
                if writer:
                    writer.write(image)
                if window and not window.show(image):
                    pipeline.request_stop()
                if not window and delivered.delivered_at - last_status >= status_every_s:
                    print(stats.status())
                    last_status = delivered.delivered_at
                if on_frame:
                    on_frame(delivered)
    except BaseException:
        if writer:
            writer.discard()
        raise
    finally:
        pipeline.close()
        if window:
            window.close()
    video = video_error = None
    if writer:
        try:
            video = writer.close()
        except OutputError as e:
            video_error = str(e)
    figures = {"source": pipeline.source.name, "device": pipeline.detector.device, "frames": stats.frames,
               "dropped_frames": pipeline.dropped, "ended": pipeline.ended, "fps": stats.mean_fps,
               "mean_latency_ms": 1000 * stats.mean_latency_s, "requests": pipeline.detector.num_requests}
    figures["executions"] = stats.executions
    meta = {**(meta or {}), **figures}
    report = None if not stats.frames else counter.report(meta) if counter else {"meta": meta}
    return Session(frames=stats.frames, dropped=pipeline.dropped, ended=pipeline.ended, fps=stats.mean_fps,
                   mean_latency_ms=1000 * stats.mean_latency_s, video=video, report=report, video_error=video_error)
