"""Concurrency (issue 14): one Detector shared by threads, several Detectors in one process, and
the asynchronous queue under a slow consumer. Results must equal a sequential run, in order."""
import threading
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np
import pytest

from babo_edge.runtime.detector import Detector
from test_runtime_detector import assert_same_result
from tiny import FP32

THREADS = 4
DEADLINE = 120  # seconds to wait for a thread that should finish: a hang guard, not a timing


@pytest.fixture(scope="module")
def batch(calib_frames):
    """Distinct frames of distinct sizes, so a result swapped between callers would show."""
    sizes = [(37, 53), (200, 300), (128, 128), (96, 64), (64, 300), (301, 99), (50, 50), (120, 80)]
    return [cv2.resize(calib_frames[i % len(calib_frames)][:, ::-1] if i >= len(calib_frames) else calib_frames[i], (w, h))
            for i, (h, w) in enumerate(sizes)]


@pytest.fixture(scope="module")
def expected(xml, batch):
    sequential = Detector(xml, config=FP32)
    return [sequential(frame) for frame in batch]


def test_the_batch_tells_its_frames_apart(expected):
    assert len({(r.frame_hw, r.scores[:3].round(4).tobytes()) for r in expected}) == len(expected)


def test_one_detector_called_from_several_threads(xml, batch, expected):
    shared = Detector(xml, config=FP32)
    start = threading.Barrier(THREADS)

    def work(thread: int) -> list:
        start.wait(DEADLINE)
        order = [(thread + step) % len(batch) for step in range(3 * len(batch))]
        return [(i, shared(batch[i])) for i in order]

    with ThreadPoolExecutor(THREADS) as pool:
        outcomes = [future.result(DEADLINE) for future in [pool.submit(work, t) for t in range(THREADS)]]
    for thread, outcome in enumerate(outcomes):
        assert [i for i, _ in outcome] == [(thread + step) % len(batch) for step in range(3 * len(batch))]
        for i, result in outcome:
            assert_same_result(result, expected[i])


def test_several_detectors_in_one_process_from_their_own_threads(xml, batch, expected):
    detectors = [Detector(xml, config=FP32), Detector(xml, config=FP32, hint="THROUGHPUT", num_requests=2),
                 Detector(xml, config=FP32)]

    def work(detector: Detector) -> list:
        sync = [detector(frame) for frame in batch]
        for i, frame in enumerate(batch):
            detector.infer_async(frame, i)
        detector.wait_all()
        return sync + [result for _, result in detector.results()]

    with ThreadPoolExecutor(len(detectors)) as pool:
        outcomes = [future.result(DEADLINE) for future in [pool.submit(work, d) for d in detectors]]
    for outcome in outcomes:
        assert len(outcome) == 2 * len(batch)
        for result, want in zip(outcome, expected + expected):
            assert_same_result(result, want)


def test_async_submissions_from_several_threads_are_delivered_once_each_in_submission_order(
        xml, batch, expected):
    shared = Detector(xml, config=FP32, hint="THROUGHPUT", num_requests=3)
    start = threading.Barrier(THREADS)

    def work(thread: int) -> None:
        start.wait(DEADLINE)
        for i in range(len(batch)):
            shared.infer_async(batch[i], (thread, i))

    with ThreadPoolExecutor(THREADS) as pool:
        for future in [pool.submit(work, t) for t in range(THREADS)]:
            future.result(DEADLINE)
    shared.wait_all()
    delivered = list(shared.results())
    assert sorted(userdata for userdata, _ in delivered) == [(t, i) for t in range(THREADS) for i in range(len(batch))]
    for thread in range(THREADS):  # each thread's frames in the order it submitted them
        assert [i for (t, i), _ in delivered if t == thread] == list(range(len(batch)))
    for (_, i), result in delivered:
        assert_same_result(result, expected[i])


def test_a_slow_callback_blocks_submission_and_drops_nothing(xml, batch, expected):
    """Back-pressure as documented: while the consumer (callback) is busy, infer_async blocks once
    every request is taken; nothing is dropped, and everything arrives in order once it resumes."""
    release = threading.Event()
    received = []

    def slow_consumer(userdata, result):
        release.wait(DEADLINE)
        received.append((userdata, result))

    queued = Detector(xml, config=FP32, hint="THROUGHPUT", num_requests=2, callback=slow_consumer)
    accepted = []
    total = 3 * len(batch)

    def submit():
        for i in range(total):
            queued.infer_async(batch[i % len(batch)], i)
            accepted.append(i)

    submitter = threading.Thread(target=submit, daemon=True)
    submitter.start()
    progress = []
    for _ in range(50):  # the count stops growing: the submitter is blocked, not slow
        submitter.join(0.1)
        progress.append(len(accepted))
    assert submitter.is_alive() and progress[-1] == progress[-20] < total
    # bounded by the requests, not by `total`: under load OpenVINO has been seen to accept up to
    # twice num_requests before the held callbacks stop it (4 with 2 requests)
    assert progress[-1] <= 2 * queued.num_requests
    release.set()
    submitter.join(DEADLINE)
    assert not submitter.is_alive()
    queued.wait_all()
    assert [userdata for userdata, _ in received] == list(range(total))
    for i, result in received:
        assert_same_result(result, expected[i % len(batch)])


def test_results_accumulate_until_read_when_nothing_consumes_them(xml, batch, expected):
    """Without a callback nothing blocks or is dropped: undrained results wait in memory for results()."""
    queued = Detector(xml, config=FP32, hint="THROUGHPUT", num_requests=2)
    total = 4 * len(batch)
    for i in range(total):
        queued.infer_async(batch[i % len(batch)], i)
    queued.wait_all()
    first = [item[0] for _, item in zip(range(5), queued.results())]
    assert first == list(range(5))
    rest = list(queued.results())
    assert [userdata for userdata, _ in rest] == list(range(5, total))
    for i, result in rest:
        assert_same_result(result, expected[i % len(batch)])
    assert np.all([r.frame_hw == expected[i % len(batch)].frame_hw for i, r in rest])
