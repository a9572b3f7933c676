"""Faults (issue 14): a stream that drops and comes back, corrupt and empty frames, a full disk,
SIGTERM and SIGINT, an IR changed under a compiled model, a slow consumer. Every run ends cleanly
and every artifact is whole or absent."""
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import cv2
import numpy as np
import pytest

from babo_edge.runtime import camera, run_camera, sources
from test_camera import FakeCapture, leftovers, read_video

REPO = Path(__file__).resolve().parents[1]
DEADLINE = 120  # seconds to wait for a process or thread that should end: a hang guard, not a timing


class MjpegServer:
    """An HTTP MJPEG stream on loopback (what IP cameras serve), read by OpenCV's FFmpeg. Each
    connection takes the next entry of `plan`: a number of frames sent before the connection is
    dropped, "down" (503: the server is restarting, the open fails), or None (frames until the
    client goes). Once the plan is used up, every connection is "down", or, with `close_when_done`,
    the server closes its socket after the last planned connection: connections are then refused."""

    def __init__(self, frames, plan, interval_s=0.01, close_when_done=False):
        self.frames, self.plan, self.interval_s = frames, list(plan), interval_s
        self.close_when_done = close_when_done
        self.connections = self.sent = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                server.connections += 1
                step = server.plan.pop(0) if server.plan else "down"
                if step == "down":
                    self.send_error(503)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
                self.end_headers()
                count = 0
                try:
                    while step is None or count < step:
                        jpeg = cv2.imencode(".jpg", server.frames[server.sent % len(server.frames)])[1].tobytes()
                        self.wfile.write(b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n"
                                         % len(jpeg) + jpeg + b"\r\n")
                        server.sent += 1
                        count += 1
                        time.sleep(server.interval_s)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client went away
                if server.close_when_done and not server.plan:
                    threading.Thread(target=server.stop, daemon=True).start()

        self._http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._http.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._http.server_port}/stream.mjpg"
        self._thread = threading.Thread(target=self._http.serve_forever, daemon=True)
        self._thread.start()

    def stop(self):
        self._http.shutdown()
        self._http.server_close()


@pytest.fixture(scope="module")
def small_frames(frames):
    return [cv2.resize(frame, (160, 120)) for frame in frames[:6]]


def test_a_stream_that_drops_and_comes_back_is_reopened_then_given_up(ov_model, small_frames, tmp_path, capsys):
    server = MjpegServer(small_frames, plan=[15, "down", 10])  # drop, restarting, back, gone for good
    try:
        source = sources.open_source(server.url)
        pipeline = camera.Pipeline(ov_model, source, backoff_s=0.05)
        session = camera.run(pipeline, output=tmp_path / "stream.mp4")
    finally:
        server.stop()
    assert session.ended == "source lost" and server.sent == 25
    assert session.frames + session.dropped == 25 and session.frames >= 2
    assert server.connections == 3 + sources.RETRIES  # open, 503, back; then every retry of the second drop
    assert len(read_video(tmp_path / "stream.mp4")) == session.frames == session.report["images"]
    errors = capsys.readouterr().err
    assert errors.count("reopening") == 2 + sources.RETRIES and "still no frame after 3 attempts" in errors
    assert leftovers(tmp_path) == []


def test_a_stream_whose_server_goes_away_is_given_up_after_refused_reconnects(ov_model, small_frames, tmp_path,
                                                                              capsys):
    server = MjpegServer(small_frames, plan=[12], close_when_done=True)  # 12 frames, then nothing listens
    try:
        source = sources.open_source(server.url)
        pipeline = camera.Pipeline(ov_model, source, backoff_s=0.05)
        session = camera.run(pipeline, output=tmp_path / "stream.mp4")
    finally:
        server.stop()
    assert session.ended == "source lost" and server.sent == 12 and server.connections == 1
    assert session.frames + session.dropped == 12 and session.frames >= 2
    assert len(read_video(tmp_path / "stream.mp4")) == session.frames == session.report["images"]
    errors = capsys.readouterr().err
    assert errors.count("reopening") == sources.RETRIES and "still no frame after 3 attempts" in errors
    assert leftovers(tmp_path) == []


def test_corrupt_frames_in_the_middle_of_a_video_end_cleanly(xml, video100, tmp_path, capsys):
    broken = tmp_path / "broken.mp4"
    data = bytearray(video100.read_bytes())
    rng = np.random.default_rng(0)
    for offset in np.linspace(0.3 * len(data), 0.6 * len(data), 12).astype(int):  # frames' data, not the index
        data[offset:offset + 200] = rng.integers(0, 256, 200, dtype=np.uint8).tobytes()
    broken.write_bytes(bytes(data))
    out = tmp_path / "out"
    assert run_camera.main(["--model", str(xml), "--source", str(broken), "--no-show",
                            "--output", str(out / "v.mp4"), "--report", str(out / "r.json")]) == 0
    report = json.loads((out / "r.json").read_text())
    assert report["meta"]["ended"] == "end of source" and 30 <= report["images"] <= 100
    assert len(read_video(out / "v.mp4")) == report["images"] and leftovers(out) == []


def test_a_camera_that_returns_empty_frames_is_reopened_then_given_up(ov_model, frames, tmp_path, capsys):
    empty = [np.empty((0, 0, 3), np.uint8)] * 50  # "ok" reads with nothing in them, for ever
    opened = []

    def open_capture():
        opened.append(1)
        return FakeCapture(frames[:3] + empty if len(opened) == 1 else empty)

    source = sources.CaptureSource("camera 3", open_capture, live=True)
    session = camera.run(camera.Pipeline(ov_model, source, backoff_s=0.01), output=tmp_path / "cam.mp4")
    assert session.ended == "source lost" and len(opened) == 1 + sources.RETRIES
    assert session.frames + session.dropped == 3 and session.frames >= 1
    assert len(read_video(tmp_path / "cam.mp4")) == session.frames
    errors = capsys.readouterr().err
    assert errors.count("reopening") == sources.RETRIES and "skipped" not in errors


def test_an_empty_frame_in_a_file_is_skipped(ov_model, frames, capsys):
    source = sources.CaptureSource("clip", lambda: FakeCapture(frames[:2] + [np.empty((0, 0, 3), np.uint8)] + frames[2:4]),
                                  live=False)
    session = camera.run(camera.Pipeline(ov_model, source))
    assert (session.frames, session.ended) == (4, "end of source")
    assert "frame 3 skipped: empty frame" in capsys.readouterr().err


@pytest.fixture
def small_disk(tmp_path):
    """A 192 KiB tmpfs mounted for the test (root only); skipped where mounting is not allowed."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if shutil.which("mount") is None or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=192k", "tmpfs", str(mount)],
                                                       capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_disk_full_while_writing_the_video_publishes_no_video_and_still_the_report(
        xml, video100, small_disk, tmp_path, capsys):
    report = tmp_path / "r.json"
    code = run_camera.main(["--model", str(xml), "--source", str(video100), "--no-show",
                            "--output", str(small_disk / "v.mp4"), "--report", str(report)])
    assert code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith(f"error: cannot write {small_disk / 'v.mp4'}") and "disk full" in error
    assert list(small_disk.iterdir()) == []  # no video, no temporary
    assert json.loads(report.read_text())["images"] == 100


def test_disk_full_while_writing_the_report_fails_in_one_line_and_keeps_the_video(
        xml, video100, small_disk, tmp_path, capsys):
    with pytest.raises(OSError), (small_disk / "filler").open("wb") as filler:  # the disk is full
        while True:
            filler.write(b"\0" * 4096)
            filler.flush()
    code = run_camera.main(["--model", str(xml), "--source", str(video100), "--no-show",
                            "--output", str(tmp_path / "v.mp4"), "--report", str(small_disk / "r.json")])
    assert code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error == f"error: cannot write {small_disk / 'r.json'}: No space left on device"
    assert [path.name for path in small_disk.iterdir()] == ["filler"]
    assert len(read_video(tmp_path / "v.mp4")) == 100 and leftovers(tmp_path) == []


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_ends_the_app_cleanly_with_video_and_report(xml, small_frames, tmp_path, signum):
    server = MjpegServer(small_frames, plan=[None], interval_s=0.02)  # endless
    out = tmp_path / "out"
    out.mkdir()
    try:
        app = subprocess.Popen([sys.executable, str(REPO / "runtime" / "run_camera.py"), "--model", str(xml),
                                "--source", server.url, "--no-show", "--output", str(out / "v.mp4"),
                                "--report", str(out / "r.json")], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, env={**os.environ, "OMP_WAIT_POLICY": "PASSIVE"})
        give_up = time.monotonic() + DEADLINE
        while not leftovers(out) and app.poll() is None and time.monotonic() < give_up:
            time.sleep(0.05)  # until the video's temporary file exists: frames are being written
        time.sleep(0.5)
        app.send_signal(signum)
        stdout, stderr = app.communicate(timeout=DEADLINE)
    finally:
        server.stop()
    assert app.returncode == 0, stderr
    report = json.loads((out / "r.json").read_text())
    assert report["meta"]["ended"] == "stopped" and report["images"] >= 1
    assert len(read_video(out / "v.mp4")) == report["images"] and leftovers(out) == []
    assert f"stopping ({signal.Signals(signum).name})" in stderr


IR_SWAP = textwrap.dedent("""
    import os, shutil, sys
    import numpy as np
    from babo_edge.runtime.detector import Detector
    xml, frame_file, how = sys.argv[1:]
    frame = np.load(frame_file)
    detector = Detector(xml, config={"INFERENCE_PRECISION_HINT": "f32"})
    before = detector(frame)
    weights = xml[:-4] + ".bin"
    if how == "truncate":  # in place: the same file, half of it gone
        os.truncate(weights, os.path.getsize(weights) // 2)
    else:  # another file renamed over it, as a new export would
        with open(weights + ".new", "wb") as file:
            file.write(os.urandom(os.path.getsize(weights)))
        os.replace(weights + ".new", weights)
    for _ in range(3):
        after = detector(frame)
        assert np.array_equal(before.boxes, after.boxes) and np.array_equal(before.scores, after.scores)
    print("same results")
""")


@pytest.mark.parametrize("how", ["truncate", "swap"])
def test_an_ir_whose_bin_changes_after_compile_keeps_its_results(xml, frames, tmp_path, how):
    ir = tmp_path / "ir"
    shutil.copytree(xml.parent, ir)
    np.save(tmp_path / "frame.npy", frames[0])
    done = subprocess.run([sys.executable, "-c", IR_SWAP, str(ir / xml.name), str(tmp_path / "frame.npy"), how],
                          capture_output=True, text=True, timeout=DEADLINE)
    assert done.returncode == 0 and "same results" in done.stdout, done.stderr  # a crash (SIGBUS) is < 0


@pytest.mark.parametrize("how", ["truncate", "swap"])
def test_an_ir_whose_bin_changed_before_compile_is_a_one_line_error(xml, video100, tmp_path, capsys, how):
    ir = tmp_path / "ir"
    shutil.copytree(xml.parent, ir)
    weights = ir / xml.with_suffix(".bin").name
    if how == "truncate":
        os.truncate(weights, weights.stat().st_size // 2)
    else:
        weights.write_bytes(b"\0" * 64)
    assert run_camera.main(["--model", str(ir / xml.name), "--source", str(video100), "--no-show",
                            "--report", str(tmp_path / "r.json")]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and error[0].startswith(f"error: {ir / xml.name}: unreadable OpenVINO IR")
    assert not (tmp_path / "r.json").exists()


@pytest.mark.parametrize("live", [True, False], ids=["live-drops", "file-waits"])
def test_a_slow_consumer_makes_a_live_source_drop_and_a_file_wait(ov_model, frames, live):
    """As runtime/camera.py documents: at the bound of `num_requests` frames in flight a live source
    drops the new frame (what is shown stays current), a file waits (every frame is processed)."""
    total = 30
    indices = []

    def slow_consumer(delivered):  # the drawing side, 30 ms per frame; the camera gives one every 5 ms
        indices.append(delivered.submitted.index)
        time.sleep(0.03)

    source = sources.CaptureSource("cam", lambda: FakeCapture((frames * 8)[:total], interval_s=0.005), live=live)
    session = camera.run(camera.Pipeline(ov_model, source, retries=0), on_frame=slow_consumer)
    assert session.frames + session.dropped == total and indices == list(range(session.frames))
    if live:
        assert session.dropped > 0 and session.ended == "source lost"
    else:
        assert (session.dropped, session.ended) == (0, "end of source")
