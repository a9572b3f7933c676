"""Soak: the camera app (runtime.camera.run) over a long looped source, watching for leaks and drift.

    python benchmarks/soak.py [--model X.xml] [--source demo|video.mp4] [--frames 20000]
        [--threads 1] [--configs counters-async,counters-sync,plain-async,plain-sync]

Each configuration (zero counters on or off; async: 2 requests, capture and inference overlapped;
sync: 1 request, one frame at a time) runs `--frames` frames of the source, looped from memory, in
one process, one after the other. A row: FPS; RSS after warm-up (the first 10% of frames) and at
the end, and its growth; open file descriptors and OS threads after warm-up and at the end; p50
and p99 latency of the first and the last 10% of frames and the ratio of the p99s. The CPU model
is printed first: timings compare only on one machine. Figures: benchmarks/README.md, Soak.
"""
from __future__ import annotations

import argparse
import itertools
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from babo_edge.errors import run_cli

CONFIGS = {"counters-async": (True, 2), "counters-sync": (True, 1), "plain-async": (False, 2), "plain-sync": (False, 1)}
WARMUP = 0.1  # the fraction of frames before the baseline sample, and of each latency window
SAMPLE_EVERY = 100  # frames between samples of RSS, descriptors and threads (the last one is "end")


class LoopedSource:
    """`frames` frames cycled from memory: a file-like source (never drops) as long as wanted."""

    live = False
    fps = None

    def __init__(self, frames: list[np.ndarray], count: int, name: str):
        self.name = f"{name} looped to {count} frames"
        self._frames = itertools.islice(itertools.cycle(frames), count)

    def read(self) -> np.ndarray | None:
        return next(self._frames, None)

    def reopen(self) -> bool:
        return False

    def close(self) -> None:
        pass


def process_figures() -> tuple[int, int, int]:
    """RSS (bytes), open file descriptors and OS threads (OpenVINO's included) of this process."""
    status = Path("/proc/self/status").read_text()
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    rss = int(fields["VmRSS"].split()[0]) * 1024
    return rss, len(os.listdir("/proc/self/fd")), int(fields["Threads"])


@dataclass(frozen=True)
class SoakRow:
    config: str
    frames: int
    fps: float
    rss_warm: int
    rss_end: int
    fds: tuple[int, int]  # after warm-up, at the end
    threads: tuple[int, int]
    first_ms: tuple[float, float]  # p50, p99 of the first 10% of frames
    last_ms: tuple[float, float]

    @property
    def rss_growth(self) -> float:
        return self.rss_end / self.rss_warm - 1

    @property
    def p99_ratio(self) -> float:
        return self.last_ms[1] / self.first_ms[1]

    def line(self) -> str:
        return (f"{self.config:<15} {self.frames:>6} {self.fps:>6.1f} {self.rss_warm / 2**20:>8.1f} "
                f"{self.rss_end / 2**20:>8.1f} {100 * self.rss_growth:>+7.2f}% {self.fds[0]:>4}->{self.fds[1]:<4} "
                f"{self.threads[0]:>3}->{self.threads[1]:<3} {self.first_ms[0]:>6.2f} {self.first_ms[1]:>6.2f} "
                f"{self.last_ms[0]:>6.2f} {self.last_ms[1]:>6.2f} {self.p99_ratio:>5.2f}")


HEADER = (f"{'config':<15} {'frames':>6} {'fps':>6} {'RSS warm':>8} {'RSS end':>8} {'growth':>8} {'fds':>10} "
          f"{'threads':>8} {'p50 1st':>6} {'p99 1st':>6} {'p50 end':>6} {'p99 end':>6} {'p99 x':>5}  (MB, ms)")


def soak(model, frames: list[np.ndarray], count: int, config: str, *, threads: int | None = 1,
         name: str = "source", core=None) -> SoakRow:
    """One configuration (a CONFIGS key) of the camera app over `frames` looped to `count`."""
    from babo_edge.runtime.camera import Pipeline, run
    counters, requests = CONFIGS[config]
    latencies: list[float] = []
    samples: dict[str, tuple[int, int, int]] = {}
    warm = max(1, int(WARMUP * count))

    def on_frame(delivered) -> None:
        latencies.append(delivered.latency_s)
        if len(latencies) == warm:
            samples["warm"] = process_figures()
        elif len(latencies) > warm and len(latencies) % SAMPLE_EVERY == 0 or len(latencies) == count:
            samples["end"] = process_figures()  # the last sample taken while running

    pipeline = Pipeline(model, LoopedSource(frames, count, name), "CPU", num_requests=requests, counters=counters,
                        config={"INFERENCE_NUM_THREADS": threads} if threads else None, core=core)
    session = run(pipeline, on_frame=on_frame, status_every_s=float("inf"))
    samples.setdefault("end", samples["warm"])
    window = max(1, int(WARMUP * len(latencies)))
    ms = 1000 * np.asarray(latencies)
    first, last = ms[:window], ms[-window:]
    return SoakRow(config, session.frames, session.fps, samples["warm"][0], samples["end"][0],
                   (samples["warm"][1], samples["end"][1]), (samples["warm"][2], samples["end"][2]),
                   (float(np.percentile(first, 50)), float(np.percentile(first, 99))),
                   (float(np.percentile(last, 50)), float(np.percentile(last, 99))))


def read_frames(spec: str) -> tuple[list[np.ndarray], str]:
    """Every frame of a video ('demo': the built-in demo video), to loop from memory."""
    import cv2

    from babo_edge.runtime.sources import DEMO_SOURCE, SourceError, demo_video
    path = demo_video() if spec == DEMO_SOURCE else Path(spec)
    capture = cv2.VideoCapture(str(path))
    frames = []
    while (frame := capture.read()[1]) is not None:
        frames.append(frame)
    capture.release()
    if not frames:
        raise SourceError(f"{path}: no frame could be read")
    return frames, path.name


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="IR .xml (default: the exported demo model)")
    parser.add_argument("--source", default="demo", help="video file or 'demo' (default)")
    parser.add_argument("--frames", type=int, default=20_000, help="frames per configuration")
    parser.add_argument("--threads", type=int, default=1, help="INFERENCE_NUM_THREADS (0: the plugin's)")
    parser.add_argument("--configs", default=",".join(CONFIGS), help=f"comma list of {', '.join(CONFIGS)}")
    args = parser.parse_args(argv)
    unknown = set(args.configs.split(",")) - set(CONFIGS)
    if unknown or args.frames < 10:
        parser.error(f"unknown configs {sorted(unknown)}" if unknown else "--frames: at least 10")
    return args


@run_cli
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import openvino as ov

    from babo_edge.benchmarks.ab_latency import machine
    from babo_edge.runtime.detector import read_ir
    from babo_edge.runtime.run_camera import model_path
    core = ov.Core()
    xml = model_path(args.model)
    model = read_ir(xml, core)
    frames, name = read_frames(args.source)
    print(machine())
    print(f"{xml}: {name} ({len(frames)} frames) looped to {args.frames} per config, "
          f"{args.threads or 'default'} thread(s)")
    print(HEADER)
    for config in args.configs.split(","):
        print(soak(model, frames, args.frames, config, threads=args.threads or None, name=name, core=core).line(),
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
