"""Timing primitives shared by the benchmarks (runtime.latency, benchmarks/ab_latency.py,
benchmarks/pruning_table.py), so every figure is timed the same way: warm-up, calls until a
count and a duration are met, percentiles, rounds interleaved over models so that load from
other processes hits them alike, and asynchronous throughput. Torch-free (openvino, numpy, tqdm)."""
from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import numpy as np
import openvino as ov
from tqdm import tqdm

WARMUP_RUNS = 5


def timed_calls(call: Callable[[np.ndarray], object], inputs: Sequence[np.ndarray], min_seconds: float,
                min_calls: int) -> list[float]:
    """Seconds of each call of `call`, cycling through `inputs` until both minimums are met."""
    times: list[float] = []
    started = time.perf_counter()
    while len(times) < min_calls or time.perf_counter() - started < min_seconds:
        item = inputs[len(times) % len(inputs)]
        start = time.perf_counter()
        call(item)
        times.append(time.perf_counter() - start)
    return times


def interleaved_medians(calls: Sequence[Callable[[np.ndarray], object]], inputs: Sequence[np.ndarray],
                        rounds: int, calls_per_round: int, progress: str | None = None) -> np.ndarray:
    """(rounds, models) per-round median latency in ms. Each round runs `calls_per_round` calls
    of every model, in an order rotated per round, so a slow phase of a shared machine hits
    every model alike; ratios to a reference are taken within a round (see ab_latency).
    `progress`: the label of a progress bar over the rounds (None: no bar)."""
    for call in calls:
        warm_up(call, inputs)
    medians = np.zeros((rounds, len(calls)))
    for r in tqdm(range(rounds), desc=progress, unit="round", disable=progress is None):
        for m in [(r + i) % len(calls) for i in range(len(calls))]:
            medians[r, m] = 1000 * np.median(timed_calls(calls[m], inputs, 0.0, calls_per_round))
    return medians


def latency_stats(seconds: Sequence[float]) -> dict[str, float]:
    """Median, p90, p99 and mean in milliseconds."""
    ms = 1000 * np.asarray(seconds, dtype=np.float64)
    median, p90, p99 = np.percentile(ms, [50, 90, 99])
    return {"median": float(median), "p90": float(p90), "p99": float(p99), "mean": float(ms.mean())}


def warm_up(call: Callable[[np.ndarray], object], inputs: Sequence[np.ndarray]) -> None:
    for i in range(WARMUP_RUNS):
        call(inputs[i % len(inputs)])


def measure_throughput(compiled: ov.CompiledModel, inputs: Sequence[np.ndarray], min_seconds: float) -> dict:
    """Frames/s of an AsyncInferQueue with the compiled model's optimal number of requests,
    over at least one pass of `inputs` and `min_seconds`, after one warm-up round."""
    requests = compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")
    queue = ov.AsyncInferQueue(compiled, requests)
    for i in range(max(requests, WARMUP_RUNS)):
        queue.start_async({0: inputs[i % len(inputs)]})
    queue.wait_all()
    submitted = 0
    started = time.perf_counter()
    while submitted < len(inputs) or time.perf_counter() - started < min_seconds:
        queue.start_async({0: inputs[submitted % len(inputs)]})  # blocks while every request is busy
        submitted += 1
    queue.wait_all()
    return {"fps": submitted / (time.perf_counter() - started), "infer_requests": requests, "frames": submitted}
