"""The camera app (runtime/camera.py, sources.py, overlay.py, outputs.py, run_camera.py): sources, the
async pipeline, drawing, outputs, live-source failures, Ctrl-C and device errors, on a tiny exported IR."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from babo_edge.models.accounting import REPORT_SCHEMA, REPORT_VERSION
from babo_edge.runtime import camera, outputs, overlay, plots, run_camera, sources
from babo_edge.runtime.detector import Detector, Result
from tiny import VIDEO_SIZE

REPO = Path(__file__).resolve().parents[1]


def read_video(path: Path) -> list[np.ndarray]:
    capture = cv2.VideoCapture(str(path))
    frames = []
    while (frame := capture.read()[1]) is not None:
        frames.append(frame)
    return frames


def leftovers(folder: Path) -> list[str]:
    """Hidden temporary files an interrupted or failed write would leave."""
    return [path.name for path in folder.iterdir() if path.name.startswith(".")]


class FakeCapture:
    """A cv2.VideoCapture stand-in: yields `frames` (one every `interval_s`, like a camera), then
    fails every read, as an unplugged camera does."""

    def __init__(self, frames=(), opened=True, interval_s=0.0):
        self.frames, self.opened, self.interval_s = list(frames), opened, interval_s

    def isOpened(self):
        return self.opened

    def read(self):
        time.sleep(self.interval_s)
        return (True, self.frames.pop(0)) if self.frames else (False, None)

    def get(self, prop):
        return 0.0

    def release(self):
        pass


class InterruptingCapture:
    """The real clip, with a Ctrl-C (SIGINT to this process) after `at` frames."""

    def __init__(self, path: Path, at: int):
        self.capture, self.at, self.read_frames = cv2.VideoCapture(str(path)), at, 0

    def __getattr__(self, name):
        return getattr(self.capture, name)

    def read(self):
        self.read_frames += 1
        if self.read_frames == self.at:
            os.kill(os.getpid(), signal.SIGINT)
        return self.capture.read()


class FailingCapture(FakeCapture):
    def read(self):
        if not self.frames:
            raise RuntimeError("driver crashed")
        return super().read()


def test_headless_run_over_a_video_writes_video_report_and_plot(tmp_path, xml, video100, capsys):
    out = tmp_path / "out"
    args = ["--model", str(xml), "--source", str(video100), "--output", str(out / "annotated.mp4"),
            "--report", str(out / "report.json"), "--plot", str(out / "blocks.png")]
    assert run_camera.main(args) == 0  # no display here: headless without --no-show
    stdout = capsys.readouterr().out
    assert "no display" in stdout and "[od] blocks" in stdout and "100 frames (end of source, 0 dropped)" in stdout

    video = read_video(out / "annotated.mp4")
    assert len(video) == 100 and video[0].shape == (VIDEO_SIZE[1], VIDEO_SIZE[0], 3)
    report = json.loads((out / "report.json").read_text())
    assert (report["schema"], report["version"], report["images"]) == (REPORT_SCHEMA, REPORT_VERSION, 100)
    assert set(report["networks"]) == {"omg", "od"} and 0 < report["fg_ratio"] < 1
    assert 0 < report["totals"]["mac_star"] <= report["totals"]["mac"]
    meta = report["meta"]
    assert (meta["frames"], meta["device"], meta["ended"], meta["precision"]) == (100, "CPU", "end of source", "fp32")
    assert meta["source"] == f"video {video100}" and meta["model"] == str(xml)
    assert meta["fps"] > 0 and meta["mean_latency_ms"] > 0
    assert (out / "blocks.png").read_bytes()[:4] == b"\x89PNG"
    assert leftovers(out) == []


def test_plot_draws_a_compared_report_beside_and_refuses_a_bad_one(tmp_path, xml, video100, capsys, monkeypatch):
    first, second = tmp_path / "first.json", tmp_path / "second.png"
    base = ["--model", str(xml), "--source", str(video100), "--no-show", "--max-frames", "5"]
    assert run_camera.main(base + ["--report", str(first), "--plot", str(tmp_path / "alone.png")]) == 0
    drawn = []
    real_figure = plots.block_zeros_figure
    monkeypatch.setattr(plots, "block_zeros_figure",
                        lambda *args, **kwargs: drawn.append(args) or real_figure(*args, **kwargs))
    assert run_camera.main(base + ["--plot", str(second), "--compare", str(first)]) == 0
    report, other, labels = drawn[0]
    assert other == json.loads(first.read_text()) and labels[0] and labels[1]  # the compared report is drawn beside
    assert report["networks"]["od"]["blocks"] and second.read_bytes()[:4] == b"\x89PNG"
    not_a_report = tmp_path / "not.json"
    not_a_report.write_text('{"schema": "something else"}')
    capsys.readouterr()
    assert run_camera.main(base + ["--plot", str(tmp_path / "x.png"), "--compare", str(not_a_report)]) == 2
    assert "not a babo-edge/mac-report report" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()


def test_roi_execution_draws_the_path_and_reports_it(tmp_path, xml, video100, capsys):
    out = tmp_path / "report.json"
    args = ["--model", str(xml), "--source", str(video100), "--no-show", "--max-frames", "6", "--execution", "roi",
            "--report", str(out), "--output", str(tmp_path / "roi.mp4")]
    assert run_camera.main(args) == 0
    assert "frames per path:" in capsys.readouterr().out
    meta = json.loads(out.read_text())["meta"]
    assert meta["execution"] == "roi" and sum(meta["executions"].values()) == meta["frames"] == 6
    assert set(meta["executions"]) <= {"roi", "dense", "empty"} and len(read_video(tmp_path / "roi.mp4")) == 6
    with pytest.raises(SystemExit):
        run_camera.main(args + ["--plot", str(tmp_path / "p.png")])
    assert "--plot and --compare need the zero counters of --execution dense" in capsys.readouterr().err


def test_hud_shows_the_path_without_counters(frames):
    result = Result(boxes=np.zeros((0, 4), np.float32), labels=np.zeros(0, np.int64), scores=np.zeros(0, np.float32),
                    classes=("a",), frame_hw=frames[0].shape[:2], execution="roi", roi=(10.0, 20.0, 210.0, 170.0))
    stats = camera.Stats(mac=0.0)
    stats.add(camera.Delivered(camera.Submitted(0, frames[0], 0.0), result, 0.01), None)
    assert stats.hud(None)[1] == "exec roi" and stats.status().endswith("ran roi 1")
    image = overlay.draw(frames[0], result, stats.hud(None))
    assert (image[169, 100] == 255).all() and (image[100, 209] == 255).all()  # the crop's bottom and right edges


def test_max_frames_stops_the_capture(ov_model, video100):
    pipeline = camera.Pipeline(ov_model, sources.open_source(str(video100)), max_frames=7)
    session = camera.run(pipeline)
    assert (session.frames, session.ended, session.report["images"]) == (7, "max frames", 7)
    assert session.report["meta"]["dropped_frames"] == 0


def test_image_folder_skips_files_that_are_not_images(tmp_path, xml, frames, capsys):
    folder = tmp_path / "images"
    folder.mkdir()
    cv2.imwrite(str(folder / "a.jpg"), cv2.resize(frames[0], (200, 150)))
    (folder / "b.jpg").write_text("not a jpeg")
    cv2.imwrite(str(folder / "c.png"), cv2.resize(frames[1], (90, 120)))  # another size: resized in the video
    (folder / "notes.txt").write_text("calibration notes")
    cv2.imwrite(str(folder / "d.png"), cv2.cvtColor(frames[2], cv2.COLOR_BGR2GRAY))
    out = tmp_path / "out.mp4"
    assert run_camera.main(["--model", str(xml), "--source", str(folder), "--no-show", "--output", str(out)]) == 0
    captured = capsys.readouterr()
    assert "3 frames (end of source" in captured.out
    warnings = [line for line in captured.err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 2 and "b.jpg" in warnings[0] and "notes.txt" in warnings[1]
    video = read_video(out)
    assert len(video) == 3 and {frame.shape for frame in video} == {(150, 200, 3)}


@pytest.mark.parametrize("make_source, message", [
    (lambda tmp: tmp / "missing.mp4", "no such file or folder"),
    (lambda tmp: tmp / "notes.mp4", "cannot open video"),
    (lambda tmp: tmp / "empty", "no files in it"),
], ids=["missing", "not-a-video", "empty-folder"])
def test_sources_that_cannot_be_opened_exit_2(tmp_path, xml, capsys, make_source, message):
    (tmp_path / "notes.mp4").write_text("not a video")
    (tmp_path / "empty").mkdir()
    code = run_camera.main(["--model", str(xml), "--source", str(make_source(tmp_path)), "--no-show",
                            "--report", str(tmp_path / "report.json")])
    errors = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(errors) == 1 and message in errors[0] and errors[0].startswith("error:")
    assert not (tmp_path / "report.json").exists()


def test_a_video_that_ends_early_is_a_clean_end(tiny_dataset, xml, tmp_path, capsys):
    assert run_camera.main(["--model", str(xml), "--source", str(tiny_dataset / "video.mp4"), "--no-show",
                            "--report", str(tmp_path / "report.json"), "--max-frames", "50"]) == 0
    assert json.loads((tmp_path / "report.json").read_text())["meta"]["frames"] == 4


def test_lost_live_source_is_reopened_then_given_up_with_a_report(ov_model, frames, tmp_path, capsys):
    opened = []
    plan = [FakeCapture(frames[:3], interval_s=0.05), FakeCapture(opened=False),
            FakeCapture(frames[3:5], interval_s=0.05)]

    def open_capture():  # camera lost after 3 frames, back after the second attempt, lost for good after 2 more
        opened.append(len(opened))
        return plan[len(opened) - 1] if len(opened) <= len(plan) else FakeCapture(opened=False)

    source = sources.CaptureSource("camera 7", open_capture, live=True)
    pipeline = camera.Pipeline(ov_model, source, backoff_s=0.01)
    session = camera.run(pipeline, output=tmp_path / "live.mp4")
    assert session.ended == "source lost" and len(opened) == 1 + 2 + sources.RETRIES
    assert session.frames + session.dropped == 5 and session.frames >= 1
    assert session.report["images"] == session.frames == len(read_video(tmp_path / "live.mp4"))
    errors = capsys.readouterr().err
    assert errors.count("reopening") == 2 + sources.RETRIES and "stopping" in errors


def test_a_live_source_that_never_delivers_gives_no_report(ov_model, capsys):
    source = sources.CaptureSource("camera 8", lambda: FakeCapture(), live=True)
    session = camera.run(camera.Pipeline(ov_model, source, retries=2, backoff_s=0.01))
    assert (session.frames, session.ended, session.report, session.video) == (0, "source lost", None, None)


def test_ctrl_c_mid_stream_finishes_the_frames_in_flight(ov_model, video100, tmp_path, capsys):
    before = signal.getsignal(signal.SIGINT)  # SIG_IGN when pytest runs as a background job
    signal.signal(signal.SIGINT, signal.default_int_handler)  # the run must see Ctrl-C either way
    try:
        _ctrl_c_mid_stream(ov_model, video100, tmp_path, capsys)
    finally:
        signal.signal(signal.SIGINT, before)


def _ctrl_c_mid_stream(ov_model, video100, tmp_path, capsys):
    source = sources.CaptureSource("clip", lambda: InterruptingCapture(video100, at=30), live=False)
    session = camera.run(camera.Pipeline(ov_model, source), output=tmp_path / "out.mp4")
    # The signal arrives while frame 30 is read: whether that frame is submitted before the stop
    # is seen is a race; every frame submitted before it is finished.
    assert session.ended == "stopped" and 29 <= session.frames < 100
    assert len(read_video(tmp_path / "out.mp4")) == session.frames == session.report["images"]
    assert leftovers(tmp_path) == [] and "stopping" in capsys.readouterr().err
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handler before the run, restored


def test_a_failing_source_leaves_no_video(ov_model, frames, tmp_path):
    source = sources.CaptureSource("camera 9", lambda: FailingCapture(frames[:5]), live=True)
    with pytest.raises(RuntimeError, match="driver crashed"):
        camera.run(camera.Pipeline(ov_model, source), output=tmp_path / "out.mp4")
    assert list(tmp_path.iterdir()) == []


def test_odd_frames_are_drawn_and_written(ov_model, xml, frames, tmp_path, capsys):
    bgr = cv2.resize(frames[0], (53, 37))
    odd = [cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY), cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)[..., None],
           cv2.cvtColor(bgr, cv2.COLOR_BGR2BGRA), bgr, np.full((1, 1, 3), 200, np.uint8)]
    detector = Detector(xml, score_threshold=0.0)
    for frame in odd:
        image = overlay.draw(frame, detector(frame), ["10.0 FPS", "GMAC* 0.1"])
        assert image.shape == (*frame.shape[:2], 3) and image.dtype == np.uint8
    assert not np.array_equal(overlay.draw(bgr, detector(bgr), []), bgr)  # tint and boxes drawn

    not_an_image = np.zeros((37, 53, 3), np.float32)
    source = sources.CaptureSource("odd", lambda: FakeCapture(odd[:3] + [not_an_image] + odd[3:]), live=False)
    session = camera.run(camera.Pipeline(ov_model, source), output=tmp_path / "odd.mp4")
    assert session.frames == 5 and "frame 4 skipped: expected a uint8 frame" in capsys.readouterr().err
    video = read_video(tmp_path / "odd.mp4")
    assert len(video) == 5 and video[0].shape == (38, 54, 3)  # mp4v needs even sides: padded, not cropped


def test_video_writer_publishes_only_on_close(tmp_path):
    writer = outputs.AtomicVideoWriter(tmp_path / "v.mp4", fps=15)
    for i in range(3):
        writer.write(np.full((37, 53, 3), 60 * i, np.uint8))
    assert not (tmp_path / "v.mp4").exists() and len(leftovers(tmp_path)) == 1
    assert writer.close() == tmp_path / "v.mp4" and leftovers(tmp_path) == []
    discarded = outputs.AtomicVideoWriter(tmp_path / "w.mp4", fps=15)
    discarded.write(np.zeros((4, 4, 3), np.uint8))
    discarded.discard()
    assert sorted(path.name for path in tmp_path.iterdir()) == ["v.mp4"]
    with pytest.raises(outputs.OutputError, match="a folder"):
        outputs.AtomicVideoWriter(tmp_path, fps=15)


@pytest.mark.parametrize("device, message", [("MYRIAD", "MYRIAD/HDDL plugins were removed"),
                                             ("GPU.7", "no GPU.7 on this machine")])
def test_removed_and_absent_devices_exit_2(device, message, capsys):
    assert run_camera.main(["--device", device, "--source", "nowhere"]) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 1 and message in errors[0] and "available: " in errors[0]


def test_missing_default_model_names_the_export_command(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(run_camera, "DEFAULT_MODEL", tmp_path / "zoo" / "INT8" / "model.xml")
    monkeypatch.setattr(run_camera, "REPO", tmp_path)
    assert run_camera.main(["--no-show"]) == 2
    assert "python export/to_ir.py models/zoo/babo-ssdlite-256.pt" in capsys.readouterr().err


def test_display_detection(monkeypatch):
    monkeypatch.setattr(camera.sys, "platform", "linux")
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    monkeypatch.setattr(camera.cv2, "getBuildInformation", lambda: "  GUI:  GTK3\n")
    assert not camera.display_available()
    monkeypatch.setenv("DISPLAY", ":0")
    assert camera.display_available()
    monkeypatch.setattr(camera.cv2, "getBuildInformation", lambda: "  GUI:  NONE\n")  # opencv-python-headless
    assert not camera.display_available()


def test_script_is_torch_free_and_refuses_myriad():
    script = subprocess.run([sys.executable, "runtime/run_camera.py", "--device", "MYRIAD"], cwd=REPO,
                            capture_output=True, text=True, timeout=60)
    assert script.returncode == 2 and "MYRIAD/HDDL plugins were removed" in script.stderr.splitlines()[-1]
    code = "import sys, babo_edge.runtime.run_camera; print([m for m in ('torch', 'nncf', 'onnx') if m in sys.modules])"
    imports = subprocess.run([sys.executable, "-c", code], cwd="/", capture_output=True, text=True, timeout=60)
    assert imports.returncode == 0 and imports.stdout.strip() == "[]", imports.stderr
