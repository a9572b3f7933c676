"""The soak's short version (benchmarks/soak.py, issue 14) as a leak check: the camera app over a
few thousand looped frames of a tiny IR keeps its memory, file descriptors and threads. Generous
bounds, no timing: the figures of the full soak are in benchmarks/README.md."""
import cv2
import pytest

from babo_edge.benchmarks import soak

FRAMES = 2000


@pytest.mark.slow
@pytest.mark.parametrize("config", ["counters-async", "plain-sync"])
def test_a_short_soak_leaks_no_memory_descriptors_or_threads(ov_model, frames, config):
    small = [cv2.resize(frame, (160, 120)) for frame in frames]
    row = soak.soak(ov_model, small, FRAMES, config, threads=1)
    assert row.frames == FRAMES
    assert row.rss_growth < 0.20, row.line()
    assert row.fds[1] <= row.fds[0] and row.threads[1] <= row.threads[0], row.line()


def test_the_looped_source_gives_exactly_the_frames_asked_for(frames):
    source = soak.LoopedSource(frames[:3], 7, "three")
    got = [source.read() for _ in range(8)]
    assert [id(frame) for frame in got[:7]] == [id(frames[i % 3]) for i in range(7)] and got[7] is None
    assert source.name == "three looped to 7 frames" and not source.live and not source.reopen()


@pytest.mark.parametrize("execution", ["dense", "auto"])
def test_a_dropped_detector_is_freed_with_its_compiled_model_and_threads(ov_model, frames, execution):
    """An app that re-creates its Detector (a new model, a reconnect) must not keep the old ones:
    the async queue's callback once held each Detector for the life of the process."""
    import gc
    import weakref

    from babo_edge.runtime.detector import Detector

    detector = Detector(ov_model, execution=execution)
    detector(frames[0])
    for index, frame in enumerate(frames[:3]):
        detector.infer_async(frame, index)
    detector.wait_all()
    assert [index for index, _ in detector.results()] == [0, 1, 2]
    dropped = weakref.ref(detector)
    del detector
    gc.collect()
    assert dropped() is None
