"""Export under interruption (issue 14): SIGKILL in the middle of an export leaves the previous
export intact, and the hidden work folders of killed exports are cleaned by the next run, never
mistaken for finished ones; nothing but our own dead work folders is ever touched."""
import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from babo_edge.export import pipeline
from babo_edge.export.pipeline import EXPORT_MARKER, clean_stale_work, prepare_output
from babo_edge.export.report import REPORT_FILE
from test_export_cli import leftovers, run_tiny

REPO = Path(__file__).resolve().parents[1]
DEADLINE = 300  # seconds: a hang guard, not a timing


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def digest(folder: Path) -> dict[str, str]:
    return {path.relative_to(folder).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(folder.rglob("*")) if path.is_file()}


def work_folder(parent: Path, name: str, kind: str, pid: int, host: str | None = None, marker: bool = True) -> Path:
    folder = parent / f".{name}.{kind}-{host or pipeline._host()}-{pid}-abc123"
    folder.mkdir()
    if marker:
        (folder / EXPORT_MARKER).write_text("{}\n")
    (folder / "model.onnx").write_bytes(b"half written")
    return folder


def test_stale_work_folders_of_dead_exports_are_removed_and_nothing_else(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / EXPORT_MARKER).write_text("{}\n")
    dead = dead_pid()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        stale = [work_folder(tmp_path, "out", "partial", dead), work_folder(tmp_path, "out", "old", dead)]
        kept = [
            work_folder(tmp_path, "out", "partial", os.getpid()),  # this process: an export in progress
            work_folder(tmp_path, "out", "partial", sleeper.pid),  # another live process
            work_folder(tmp_path, "out", "partial", dead, host="otherhost"),  # another machine's, shared folder
            work_folder(tmp_path, "other", "partial", dead),  # another output's
        ]
        for name in (".out.partial-abc123", ".out.partial-notes", "out.partial-x-1-y", f".out.partial-{dead}-x"):
            (tmp_path / name).mkdir()  # older naming (owner unknown) or not ours at all
            kept.append(tmp_path / name)
        target = tmp_path / "precious"
        target.mkdir()
        (target / "keep.txt").write_text("mine")
        link = tmp_path / f".out.partial-{pipeline._host()}-{dead}-link"
        link.symlink_to(target, target_is_directory=True)
        kept.append(link)

        assert sorted(clean_stale_work(out)) == sorted(stale)
        assert all(not folder.exists() for folder in stale)
        assert all(folder.exists() for folder in kept) and (target / "keep.txt").read_text() == "mine"
        assert out.is_dir() and clean_stale_work(out) == []
    finally:
        sleeper.kill()
        sleeper.wait()


def test_killed_between_publishing_renames_restores_the_previous_export(tmp_path):
    """SIGKILL after `output` was moved aside and before the new folder took its place: the previous
    export (in `.old-`) is moved back, the unpublished new one is removed."""
    dead = dead_pid()
    previous = work_folder(tmp_path, "out", "old", dead)
    (previous / REPORT_FILE).write_text("{}")
    before = digest(previous)
    unpublished = work_folder(tmp_path, "out", "partial", dead)
    out = tmp_path / "out"
    work = prepare_output(out)
    try:
        assert digest(out) == before and not previous.exists() and not unpublished.exists()
        assert leftovers(tmp_path) == [work.name] and work.name.startswith(pipeline._work_prefix(out))
    finally:
        os.rename(work, tmp_path / "done")


def test_a_live_work_folder_is_never_removed(tmp_path):
    out = tmp_path / "out"
    work = prepare_output(out)
    assert pipeline._work_prefix(out) in work.name and (work / EXPORT_MARKER).is_file()
    assert clean_stale_work(out) == [] and work.is_dir()  # ours, alive: never removed


@pytest.mark.slow
def test_sigkill_mid_export_keeps_the_previous_export_and_the_next_run_cleans_up(tiny_checkpoint, tiny_dataset,
                                                                                tmp_path):
    out = tmp_path / "out"
    assert run_tiny(tiny_checkpoint, tiny_dataset, out, "--precision", "fp32", "--no-val") == 0
    previous = digest(out)
    command = [sys.executable, str(REPO / "export" / "to_ir.py"), str(tiny_checkpoint), "--output", str(out),
               "--calib", str(tiny_dataset), "--val", str(tiny_dataset), "--subset-size", "4",
               "--parity-images", "2", "--precision", "fp32,int8"]
    export = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + DEADLINE
        while not any((folder / "model.onnx").is_file() for folder in tmp_path.glob(".out.partial-*")):
            assert export.poll() is None, export.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "the export never started writing"
            time.sleep(0.02)
    finally:
        export.send_signal(signal.SIGKILL)
        export.wait(DEADLINE)
    assert export.returncode == -signal.SIGKILL
    stale = [folder.name for folder in tmp_path.glob(".out.partial-*")]
    assert len(stale) == 1 and f"-{export.pid}-" in stale[0]  # left behind: the process had no chance
    assert digest(out) == previous  # the previous export is intact

    assert run_tiny(tiny_checkpoint, tiny_dataset, out, "--precision", "fp32", "--no-val") == 0
    assert leftovers(tmp_path) == [] and (out / "FP32" / "model.xml").is_file() and (out / REPORT_FILE).is_file()
