"""runtime/benchmark.py, latency.py, timing.py, latency_table.py and gate.py: the report, its ratios,
MAC*, the regression gate and every input error. Speeds are measured but never asserted: only their
structure and arithmetic."""
import json
import subprocess
import sys
from dataclasses import asdict, replace
from pathlib import Path

import pytest
import torch

from babo_edge.export.to_ir import main as to_ir_main
from babo_edge.models.builders import build_model
from babo_edge.models.checkpoint import save_checkpoint
from babo_edge.runtime import gate, latency, latency_table, timing
from babo_edge.runtime.benchmark import main as benchmark_main
from tiny import CLASS_NAMES, CONFIG

REPO = Path(__file__).resolve().parents[1]
QUICK = ["--frames", "2", "--duration", "0.05"]
ROW_FIELDS = {"runtime", "model", "precision", "device", "source", "input_shape", "inference_precision", "threads",
              "compile_ms", "first_inference_ms", "latency_ms", "latency_runs", "throughput_fps", "infer_requests",
              "throughput_frames", "gmac", "gmac_star", "zero_ratio", "fg_ratio", "sparsity_device",
              "counter_overhead", "vs_first", "vs_fp32"}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tiny_model):
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pt", tiny_model, CONFIG, CLASS_NAMES)


@pytest.fixture(scope="module")
def export_folder(checkpoint, tiny_dataset):
    """FP32 and INT8 IRs in export/to_ir.py's layout, named like the checkpoint (tiny_ir)."""
    folder = checkpoint.with_name("tiny_ir")
    code = to_ir_main([str(checkpoint), "--output", str(folder), "--precision", "fp32,int8", "--static", "--no-val",
                       "--subset-size", "4", "--calib", str(tiny_dataset), "--parity-images", "2"])
    assert code == 0
    return folder


@pytest.fixture(scope="module")
def report(export_folder, checkpoint, tiny_dataset):
    frames = latency.load_val_frames(3, tiny_dataset)
    targets = latency.resolve_targets([export_folder], ("fp32", "int8"))
    settings = latency.Settings(frames=3, duration=0.05, overhead_runs=2)
    measured = latency.run_benchmark(targets, frames, settings, pytorch=[checkpoint])
    assert isinstance(measured, latency.BenchmarkReport)
    assert all(isinstance(row, latency.BenchmarkRow) for row in measured.rows)
    return asdict(measured)


def test_report_schema_keys_and_types(report):
    assert (report["schema"], report["version"]) == ("babo-edge/benchmark", 1)
    assert json.loads(json.dumps(report)) == report
    machine = report["machine"]
    assert {"cpu", "device_name", "cores", "openvino", "python"} <= set(machine)
    assert isinstance(machine["cpu"], str) and machine["cpu"] and isinstance(machine["cores"], int)
    assert machine["torch"] == torch.__version__
    assert report["settings"] | {"frames": 3} == report["settings"] and report["settings"]["device"] == "CPU"
    rows = report["rows"]
    assert [(r["runtime"], r["model"], r["precision"]) for r in rows] == [
        ("openvino", "tiny", "fp32"), ("openvino", "tiny", "int8"), ("pytorch", "tiny", "pytorch")]
    for row in rows:
        assert set(row) == ROW_FIELDS and row["device"] == "CPU"
        assert set(row["latency_ms"]) == {"median", "p90", "p99", "mean"}
        assert all(isinstance(v, float) and v > 0 for v in row["latency_ms"].values())
        assert row["latency_ms"]["median"] <= row["latency_ms"]["p90"] <= row["latency_ms"]["p99"]
        assert row["latency_runs"] >= 3 and row["compile_ms"] > 0 and row["first_inference_ms"] > 0
        assert 0 < row["fg_ratio"] < 1 and isinstance(row["threads"], int)
    for row in rows[:2]:
        assert row["throughput_fps"] > 0 and row["infer_requests"] >= 1 and row["throughput_frames"] >= 3
        assert isinstance(row["counter_overhead"], float) and row["sparsity_device"] == "CPU"
        assert row["input_shape"] == "[1,3,128,128]"
    assert rows[2]["throughput_fps"] is None and rows[2]["counter_overhead"] is None


def test_ratios_against_the_first_row_and_fp32_of_the_same_model(report):
    fp32, int8, eager = report["rows"]
    for row in report["rows"]:
        assert row["vs_first"]["latency"] == pytest.approx(row["latency_ms"]["median"] / fp32["latency_ms"]["median"])
        assert row["vs_first"]["gmac_star"] == pytest.approx(row["gmac_star"] / fp32["gmac_star"])
    assert fp32["vs_first"] == {"latency": 1.0, "throughput": 1.0, "gmac_star": 1.0} and fp32["vs_fp32"] is None
    assert int8["vs_first"]["throughput"] == pytest.approx(int8["throughput_fps"] / fp32["throughput_fps"])
    assert int8["vs_fp32"] == int8["vs_first"]
    assert eager["vs_fp32"]["latency"] == pytest.approx(eager["latency_ms"]["median"] / fp32["latency_ms"]["median"])
    assert eager["vs_first"]["throughput"] is None


def test_gmac_star_at_most_gmac_and_the_same_count_as_pytorch(report):
    fp32, int8, eager = report["rows"]
    for row in report["rows"]:
        assert 0 < row["gmac_star"] <= row["gmac"] and 0 < row["zero_ratio"] < 1
    assert fp32["gmac"] == pytest.approx(eager["gmac"], rel=1e-9) == pytest.approx(int8["gmac"], rel=1e-9)


def test_table_shows_every_row_with_its_ratios(report):
    table = latency_table.format_table(report)
    assert "vs first row" in table and "first row (tiny FP32)" in table and "1.00x" in table
    lines = table.splitlines()
    assert [line.split()[:2] for line in lines[3:6]] == [["tiny", "FP32"], ["tiny", "INT8"], ["tiny", "PyTorch"]]
    assert report["machine"]["cpu"] in table


def measured_row(model="m", precision="fp32", median=10.0, fps=100.0, gmac_star=0.2, runtime="openvino",
                 device="CPU") -> latency.BenchmarkRow:
    return latency.BenchmarkRow(
        runtime=runtime, model=model, precision=precision, device=device, source="x", input_shape="[1,3,8,8]",
        inference_precision="f32", threads=2, compile_ms=1.0, first_inference_ms=1.0,
        latency_ms={"median": median, "p90": median, "p99": median, "mean": median}, latency_runs=3,
        throughput_fps=fps, infer_requests=1, throughput_frames=3, gmac=0.4, gmac_star=gmac_star, zero_ratio=0.5,
        fg_ratio=0.5, sparsity_device=device, counter_overhead=None)


def row(*args, **kwargs) -> dict:
    """A row as the report's JSON holds it (what the gate and the tables read)."""
    return asdict(measured_row(*args, **kwargs))


def test_with_ratios_on_hand_made_rows():
    rows = latency.with_ratios([measured_row("vanilla"), measured_row("vanilla", "int8", 5.0, 250.0, 0.19),
                                measured_row("babo", median=8.0, fps=120.0, gmac_star=0.1),
                                measured_row("babo", "int8", 4.0, 300.0, 0.1),
                                measured_row("babo", "pytorch", 40.0, None, 0.1, runtime="pytorch")])
    assert set(asdict(rows[0])) == ROW_FIELDS
    rows = [asdict(r) for r in rows]
    assert [r["vs_first"] for r in rows] == [
        {"latency": 1.0, "throughput": 1.0, "gmac_star": 1.0},
        {"latency": 0.5, "throughput": 2.5, "gmac_star": pytest.approx(0.95)},
        {"latency": 0.8, "throughput": 1.2, "gmac_star": 0.5},
        {"latency": 0.4, "throughput": 3.0, "gmac_star": 0.5},
        {"latency": 4.0, "throughput": None, "gmac_star": 0.5}]
    assert [r["vs_fp32"] and r["vs_fp32"]["latency"] for r in rows] == [None, 0.5, None, 0.5, 5.0]
    assert rows[3]["vs_fp32"]["throughput"] == 2.5


# --- the regression gate, on synthetic baselines ---

BASELINE = [row("vanilla"), row("babo", "int8", median=5.0, fps=200.0)]


@pytest.mark.parametrize("median, fps", [(10.5, 95.0), (10.99, 90.1), (7.0, 150.0)])
def test_gate_passes_small_changes_and_improvements(median, fps):
    comparison = gate.compare_to_baseline([row("vanilla", median=median, fps=fps)], BASELINE, 0.10)
    assert comparison.regressions == [] and comparison.not_in_baseline == []


def test_gate_fails_a_20_percent_slower_latency_and_lower_throughput():
    current = [row("vanilla", median=12.0, fps=100.0), row("babo", "int8", median=5.0, fps=160.0)]
    assert gate.compare_to_baseline(current, BASELINE, 0.10).regressions == [
        "vanilla FP32 on CPU: median latency 12.00 ms vs 10.00 in the baseline (+20.0%, limit +10%)",
        "babo INT8 on CPU: throughput 160.00 frames/s vs 200.00 in the baseline (-20.0%, limit -10%)"]
    assert gate.compare_to_baseline(current, BASELINE, 0.25).regressions == []


def test_gate_reports_rows_missing_from_the_baseline_without_failing():
    current = [row("vanilla"), row("vanilla", "int8"), row("vanilla", device="GPU"),
               row("babo", "pytorch", fps=None, runtime="pytorch")]
    comparison = gate.compare_to_baseline(current, BASELINE, 0.10)
    assert comparison.regressions == []
    assert comparison.not_in_baseline == ["vanilla INT8 on CPU: not in the baseline, not compared",
                                          "vanilla FP32 on GPU: not in the baseline, not compared",
                                          "babo PyTorch on CPU: not in the baseline, not compared"]


def test_cli_writes_the_json_and_fails_on_a_regression(export_folder, tiny_dataset, tmp_path, report, capsys):
    """The baseline claims 10x faster rows than measured: exit 1, one line per regressed metric."""
    fast = {**report, "rows": [{**r, "latency_ms": {**r["latency_ms"], "median": r["latency_ms"]["median"] / 10},
                                "throughput_fps": r["throughput_fps"] and r["throughput_fps"] * 10}
                               for r in report["rows"]]}
    (tmp_path / "fast.json").write_text(json.dumps(fast))
    out = tmp_path / "out.json"
    code = benchmark_main(["--model", str(export_folder), "--precision", "int8", "--data", str(tiny_dataset), *QUICK,
                           "--json", str(out), "--baseline", str(tmp_path / "fast.json")])
    assert code == 1
    written = json.loads(out.read_text())
    assert written["schema"] == "babo-edge/benchmark" and [r["precision"] for r in written["rows"]] == ["int8"]
    errors = capsys.readouterr().err.splitlines()
    regressions = [line for line in errors if line.startswith("regression: ")]
    assert [line.split(": ")[1] for line in regressions] == ["tiny INT8 on CPU"] * 2
    assert "median latency" in regressions[0] and "throughput" in regressions[1]


@pytest.mark.parametrize("content, message", [
    ("{not json", "not a JSON file"),
    ('{"schema": "babo-edge/mac-report", "version": 1}', "not a babo-edge/benchmark version 1 report"),
    ('{"schema": "babo-edge/benchmark", "version": 1, "rows": []}', "no rows"),
    ('{"schema": "babo-edge/benchmark", "version": 1, "rows": [{"model": "m", "precision": "fp32", "device": "CPU", '
     '"latency_ms": {"median": "fast"}}]}', "row 0 (m FP32 on CPU) has no valid latency_ms median"),
])
def test_corrupt_or_mismatched_baseline_is_a_one_line_error(export_folder, tmp_path, capsys, content, message):
    baseline = tmp_path / "baseline.json"
    baseline.write_text(content)
    assert benchmark_main(["--model", str(export_folder), "--baseline", str(baseline)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: baseline {baseline}: ") and message in err and err.count("\n") == 1


@pytest.mark.parametrize("device, message", [("GPU", "no GPU on this machine"), ("NPU", "no NPU on this machine"),
                                             ("MYRIAD", "MYRIAD/HDDL plugins were removed")])
def test_absent_device_is_the_devices_error(export_folder, capsys, device, message):
    assert benchmark_main(["--model", str(export_folder), "--device", device]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1


def test_missing_export_names_the_command_that_makes_it(tmp_path, export_folder, capsys):
    (tmp_path / "demo.pt").touch()
    with pytest.raises(latency.BenchmarkError, match=r"make it with: python export/to_ir.py .*demo\.pt$"):
        latency.resolve_targets([tmp_path / "demo_ir"], ("fp32",))
    with pytest.raises(latency.BenchmarkError, match=r"has no FP16/model.xml \(precisions present: fp32, int8\)"):
        latency.resolve_targets([export_folder], ("fp16",))
    present, notes = latency.default_model_folders([export_folder, tmp_path / "demo_ir"])
    assert present == [export_folder] and len(notes) == 1 and "export/to_ir.py" in notes[0]
    assert benchmark_main(["--model", str(tmp_path / "demo_ir")]) == 2
    assert "python export/to_ir.py" in capsys.readouterr().err


def test_an_xml_takes_its_name_and_precision_from_the_export_layout(export_folder):
    assert latency.resolve_targets([export_folder / "INT8" / "model.xml"], ("fp32",)) == [
        latency.Target("tiny", export_folder / "INT8" / "model.xml", "int8")]


def test_timing_helpers():
    calls = []
    times = timing.timed_calls(calls.append, ["a", "b", "c"], 0.0, 5)
    assert calls == ["a", "b", "c", "a", "b"] and len(times) == 5
    stats = timing.latency_stats([0.001 * v for v in range(1, 101)])
    assert stats == pytest.approx({"median": 50.5, "p90": 90.1, "p99": 99.01, "mean": 50.5})


def test_torch_free_in_a_fresh_interpreter(export_folder, tiny_dataset):
    code = ("import sys\n"
            "from babo_edge.runtime.benchmark import main\n"
            f"code = main(['--model', {str(export_folder)!r}, '--data', {str(tiny_dataset)!r}, "
            f"'--precision', 'fp32', *{QUICK!r}])\n"
            "print(code, sorted(m for m in ('torch', 'nncf', 'onnx') if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], cwd="/", capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "0 []"


def test_execution_modes_side_by_side_per_scene(export_folder, tiny_dataset, tmp_path, capsys):
    out = tmp_path / "executions.json"
    code = benchmark_main(["--model", str(export_folder), "--precision", "fp32", "--data", str(tiny_dataset),
                           "--frames", "2", "--execution", "dense,roi,auto", "--scenes", "video,empty",
                           "--rounds", "2", "--json", str(out)])
    assert code == 0
    report = json.loads(out.read_text())
    rows = report["rows"]
    assert [(row["scene"], row["execution"]) for row in rows] == [
        (scene, execution) for scene in ("video", "empty") for execution in ("dense", "roi", "auto")]
    for row in rows:
        assert row["runs"] == 4 and row["frames"] == 2 and sum(row["share"].values()) == pytest.approx(1)
        assert 0 <= row["mean_area"] <= 1 and row["median_ms"] > 0
    assert all(row["share"]["dense"] == 1 for row in rows if row["execution"] == "dense")
    table = capsys.readouterr().out
    assert "x ref" in table and "ISA:" in table and table.count("tiny ") == len(rows)
    with pytest.raises(SystemExit):
        benchmark_main(["--model", str(export_folder), "--execution", "sparse"])
    assert "execution modes are a comma list of dense, roi, auto; got 'sparse'" in capsys.readouterr().err


@pytest.fixture(scope="module")
def vanilla_folder(checkpoint, tiny_dataset):
    """The vanilla twin of the tiny BABO export: the same detector weights, no OMG."""
    torch.manual_seed(0)
    vanilla_config = replace(CONFIG, omg=False, omg_size=None)
    babo = build_model(CONFIG)
    vanilla = build_model(vanilla_config)
    vanilla.detector.load_state_dict(babo.detector.state_dict())
    path = save_checkpoint(checkpoint.with_name("vanilla.pt"), vanilla, vanilla_config, CLASS_NAMES)
    folder = path.with_name("vanilla_ir")
    assert to_ir_main([str(path), "--output", str(folder), "--precision", "fp32", "--no-val", "--subset-size", "2",
                       "--calib", str(tiny_dataset), "--parity-images", "1"]) == 0
    return folder


def test_crop_curve_covers_every_crop_size_and_draws_it(export_folder, vanilla_folder, tmp_path, capsys):
    out, png = tmp_path / "curve.json", tmp_path / "curve.png"
    code = benchmark_main(["--model", str(vanilla_folder), str(export_folder), "--precision", "fp32",
                           "--crop-curve", str(png), "--rounds", "2", "--json", str(out)])
    assert code == 0
    report = json.loads(out.read_text())
    assert report["reference"] == "vanilla" and report["reference_ms"] > 0
    (curve,) = report["curves"]
    cells = -(-CONFIG.input_size[0] // 32)  # k x k stride-32 cells, k = 1 .. all
    assert [point["crop_hw"] for point in curve["points"]] == [
        [min(32 * k, CONFIG.input_size[0]), min(32 * k, CONFIG.input_size[1])] for k in range(1, cells + 1)]
    areas = [point["area"] for point in curve["points"]]
    assert areas == sorted(areas) and areas[-1] == pytest.approx(1.0)
    for point in curve["points"]:
        assert point["frame_ms"] > point["roi_ms"] > 0 and point["ratio"] > 0
    assert curve["omg_ratio"] > 0 and curve["dense_ratio"] > 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = capsys.readouterr().out
    assert "OMG + crop" in table and "ISA:" in table and table.count("x vanilla") >= 1


def test_crop_curve_needs_a_vanilla_reference(export_folder, tmp_path, capsys):
    code = benchmark_main(["--model", str(export_folder), "--precision", "fp32", "--crop-curve", str(tmp_path / "c.png")])
    assert code == 2 and not (tmp_path / "c.png").exists()
    assert "needs a vanilla IR (the reference) and at least one BABO IR" in capsys.readouterr().err
