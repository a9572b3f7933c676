"""The camera app's library: the overlapped capture -> inference -> drawing pipeline, its running
statistics, the window and the session (`run`). Its frames come from runtime.sources, its overlay
from runtime.overlay, its video from runtime.outputs. Torch-free (openvino, numpy, cv2, the
standard library and the project's torch-free modules), so it runs on the edge box.

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
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import openvino as ov

from babo_edge.models.accounting import LayerCount, conv_macs
from babo_edge.runtime.detector import Detector, FrameError, ModelError, Result
from babo_edge.runtime.outputs import AtomicVideoWriter, OutputError
from babo_edge.runtime.overlay import DISPLAY_THRESHOLD, draw
from babo_edge.runtime.sources import BACKOFF_S, RETRIES, Source, read_or_reopen, warn
from babo_edge.runtime.sparsity import SparsityCounter, instrument

DEFAULT_VIDEO_FPS = 15.0  # for output videos of sources that do not say (cameras often report 0)
STATUS_EVERY_S = 5.0
WINDOW = "babo-edge"


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
