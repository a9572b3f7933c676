"""The installed package: one importable name, a torch-free base install, console scripts, and
CLIs whose --help imports none of the heavy stages."""
import importlib.metadata
import os
import subprocess
import sys
import venv
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = {"babo-export": "export/to_ir.py", "babo-camera": "runtime/run_camera.py",
           "babo-bench": "runtime/benchmark.py", "babo-train": "train/train.py", "babo-eval": "train/evaluate.py",
           "babo-release": "train/release.py", "babo-report": "models/report.py",
           "babo-data": "calibration/make_dataset.py"}
HEAVY = ("torch", "nncf", "onnx", "onnxruntime", "openvino", "skimage", "matplotlib")


def test_console_scripts_are_the_clis():
    scripts = {ep.name: ep for ep in importlib.metadata.entry_points(group="console_scripts")
               if ep.name.startswith("babo-")}
    assert set(scripts) == set(SCRIPTS)
    for name, path in SCRIPTS.items():
        module = scripts[name].value.split(":")[0]
        assert module == "babo_edge." + path.removesuffix(".py").replace("/", ".")
        assert callable(scripts[name].load())


def test_base_install_is_the_edge_runtime():
    required = importlib.metadata.requires("babo-edge")
    base = sorted(r.split(">")[0].split("=")[0].split("<")[0].strip() for r in required if "extra ==" not in r)
    assert base == ["numpy", "opencv-python-headless", "openvino"]


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_help_imports_no_heavy_stage(name):
    """--help stays fast: the stages import torch / nncf / openvino only when they run (the
    runtime CLIs need openvino, ~0.5 s, and nothing heavier)."""
    code = ("import runpy, sys\n"
            f"sys.argv = [{SCRIPTS[name]!r}, '--help']\n"
            "try:\n"
            f"    runpy.run_path({str(REPO / SCRIPTS[name])!r}, run_name='__main__')\n"
            "except SystemExit as e:\n"
            "    assert e.code in (0, None), e.code\n"
            f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], cwd="/", capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    allowed = ["openvino"] if SCRIPTS[name].startswith("runtime/") else []
    assert out.stdout.strip().splitlines()[-1] == repr(allowed)


@pytest.mark.slow
def test_fresh_venv_base_install_has_no_torch(tmp_path):
    """`pip install .` into an empty venv: the runtime imports and runs without torch or nncf,
    and only the package name is installed (no top-level `models`, `runtime`, ...)."""
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    environ = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", str(REPO), "-c", str(REPO / "constraints.txt")],
                   check=True, env=environ, timeout=900)
    listed = subprocess.run([str(python), "-m", "pip", "list", "--format=freeze"], capture_output=True, text=True,
                            check=True, env=environ).stdout.lower()
    assert "openvino==" in listed and "torch" not in listed and "nncf" not in listed
    code = ("import sys, importlib.util\n"
            "from babo_edge.runtime.detector import Detector\n"
            "from babo_edge.runtime import devices, sparsity\n"
            "assert all(importlib.util.find_spec(n) is None for n in ('models', 'runtime', 'export', 'train'))\n"
            "print(sorted(m for m in ('torch', 'nncf') if m in sys.modules))\n")
    out = subprocess.run([str(python), "-c", code], cwd=tmp_path, capture_output=True, text=True, env=environ, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
