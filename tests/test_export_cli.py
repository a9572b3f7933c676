"""`python export/to_ir.py`: the demo checkpoint end to end, the artifact layout, options, every
input error (exit 2, nothing written) and Ctrl-C (exit 130, nothing written)."""
import json
import os
import stat
from contextlib import nullcontext
from dataclasses import asdict
from pathlib import Path

import numpy as np
import onnx
import openvino as ov
import pytest
import torch

from babo_edge.calibration.coco import CocoDetection
from babo_edge.calibration.synthetic import split_files
from babo_edge.export import mask_graph, options, pipeline
from babo_edge.export.parity import openvino_runner
from babo_edge.export.report import REPORT_FILE
from babo_edge.export.to_ir import main as to_ir_main
from babo_edge.models.builders import ModelConfig, build_model
from babo_edge.runtime.detector import read_model_info
from babo_edge.export.quantize import CalibrationImages
from babo_edge.models.checkpoint import load_model, save_checkpoint
from babo_edge.models.preprocess import to_model_input

ZOO = Path(__file__).resolve().parents[1] / "models" / "zoo"
LAYOUT = ["model.onnx", "FP32/model.xml", "FP32/model.bin", "FP16/model.xml", "FP16/model.bin",
          "INT8/model.xml", "INT8/model.bin", "ovms/config.json", REPORT_FILE]


def leftovers(folder: Path) -> list[str]:
    """Hidden work folders an export would leave behind."""
    return [p.name for p in folder.iterdir() if ".partial-" in p.name or ".old-" in p.name]


@pytest.fixture(scope="module")
def demo_export(tmp_path_factory):
    """The shipped BABO demo checkpoint, exported with a small calibration subset and val sample."""
    out = tmp_path_factory.mktemp("demo") / "babo_ir"
    code = to_ir_main([str(ZOO / "babo-ssdlite-256.pt"), "--output", str(out), "--subset-size", "32",
                       "--val-images", "60"])
    return code, out, json.loads((out / REPORT_FILE).read_text())


@pytest.mark.slow
def test_demo_export_writes_every_artifact(demo_export):
    code, out, report = demo_export
    assert code == 0 and report["failures"] == {}
    assert all((out / name).is_file() for name in LAYOUT)
    onnx.checker.check_model(str(out / "model.onnx"))
    assert {name for name in report["files"]} >= set(LAYOUT) - {REPORT_FILE}
    assert report["files"]["INT8/model.bin"] < report["files"]["FP16/model.bin"] < report["files"]["FP32/model.bin"]
    assert set(report["seconds"]) >= {"onnx", "convert", "parity", "int8", "accuracy", "total"}
    assert set(report["versions"]) == {"torch", "onnx", "openvino", "nncf"}


@pytest.mark.slow
def test_demo_export_ovms_repository_serves_the_int8_ir(demo_export):
    _, out, report = demo_export
    config = json.loads((out / "ovms" / "config.json").read_text())
    entry = config["model_config_list"][0]["config"]
    assert entry == {"name": "babo-ssdlite-256", "base_path": "/models/babo-ssdlite-256"}
    version = out / "ovms" / "babo-ssdlite-256" / "1"
    assert (version / "model.bin").read_bytes() == (out / "INT8" / "model.bin").read_bytes()
    assert report["ovms"]["precision"] == "int8"


def test_demo_export_int8_keeps_the_mask_binary(demo_export, tmp_path):
    _, out, report = demo_export
    int8 = ov.Core().read_model(str(out / "INT8" / "model.xml"))
    assert mask_graph.fake_quantizes_on_mask(int8) == []
    assert mask_graph.quantizers_not_keeping_zero(int8) == []
    assert report["quantization"]["fake_quantize_nodes"] > 100  # the detector itself is INT8
    assert report["parity"]["int8"]["mask_non_binary"] == 0
    coco = CocoDetection(*split_files(_dataset_dir(), "val"))
    run = openvino_runner(ov.Core().compile_model(int8, "CPU"))
    masks = [run(to_model_input(coco[i].image, (256, 256))[None])["mask"] for i in range(3)]
    assert set(np.unique(np.concatenate(masks))) <= {0.0, 1.0}


@pytest.mark.slow
def test_demo_export_parity_and_accuracy(demo_export):
    _, _, report = demo_export
    for name in ("onnx", "fp32"):
        parity = report["parity"][name]
        assert parity["unmatched"] == 0 and parity["max_score_diff"] <= 1e-4 and parity["max_box_diff"] <= 1e-2
        assert parity["mask_mismatches"] <= 1e-4 * parity["mask_pixels"]
    accuracy = report["accuracy"]
    assert accuracy["images"] == 60
    fp32, int8 = accuracy["fp32"], accuracy["int8"]
    assert fp32["metrics"]["AP50"] > 0 and int8["metrics"]["AP50"] > 0
    assert accuracy["mask_iou"] > 0.95 and abs(accuracy["ap_drop"]) < 3.0
    # BABO blacks out most of the detector's input: zeros well above the ~46% of a vanilla SSDLite.
    assert 0.6 < fp32["od_zero_ratio"] < 0.95
    assert fp32["gmac_star"] < 0.6 * fp32["gmac"]
    # The INT8 convs read the zero level where FP32 reads 0: the same saving, within mask changes.
    assert abs(int8["gmac_star"] / fp32["gmac_star"] - 1) < 0.03
    assert int8["mac_report"]["schema"] == "babo-edge/mac-report" and int8["schema"] == "babo-edge/evaluation"


@pytest.mark.slow
def test_demo_export_metadata_is_enough_for_the_runtime(demo_export):
    _, out, _ = demo_export
    info = read_model_info(ov.Core().read_model(str(out / "FP16" / "model.xml")))
    assert info["precision"] == "fp16" and info["outputs"] == "detections"
    assert (info["input_height"], info["mask_input_height"]) == ("256", "128")
    # Static by default: NPUs need it.
    assert ov.Core().read_model(str(out / "INT8" / "model.xml")).input(0).get_partial_shape().is_static
    assert len(info["labels"].split()) == 6 and len(json.loads(info["convs"])) > 100


def _dataset_dir() -> Path:
    from babo_edge.calibration.synthetic import ensure_default_dataset
    return ensure_default_dataset()


# --- options on a tiny model (conftest's tiny_checkpoint) ----------------------------------------

def run_tiny(checkpoint, dataset, out, *extra) -> int:
    return to_ir_main([str(checkpoint), "--output", str(out), "--calib", str(dataset), "--val", str(dataset),
                       "--subset-size", "4", "--parity-images", "2", *extra])


def test_precision_subset_and_accuracy_control(tiny_checkpoint, tiny_dataset, tmp_path):
    out = tmp_path / "int8_only"
    assert run_tiny(tiny_checkpoint, tiny_dataset, out, "--precision", "int8", "--max-ap-drop", "0.5") == 0
    report = json.loads((out / REPORT_FILE).read_text())
    assert not (out / "FP32").exists() and not (out / "FP16").exists() and (out / "INT8" / "model.xml").is_file()
    assert report["quantization"]["method"] == "quantize_with_accuracy_control"
    assert report["quantization"]["max_ap_drop"] == 0.5
    assert mask_graph.fake_quantizes_on_mask(ov.Core().read_model(str(out / "INT8" / "model.xml"))) == []


def test_raw_outputs_dynamic_batch_and_input_size(tiny_checkpoint, tiny_dataset, tmp_path):
    out = tmp_path / "raw"
    assert run_tiny(tiny_checkpoint, tiny_dataset, out, "--precision", "fp32", "--raw-outputs",
                    "--dynamic-batch", "--input-size", "160") == 0
    report = json.loads((out / REPORT_FILE).read_text())
    assert report["failures"] == {} and report["parity"]["fp32"]["matched"] > 0
    model = ov.Core().read_model(str(out / "FP32" / "model.xml"))
    assert [o.get_any_name() for o in model.outputs] == ["cls_logits", "box_deltas", "mask"]
    assert model.input(0).get_partial_shape()[0].is_dynamic
    assert list(model.input(0).get_partial_shape()[1:].to_shape()) == [3, 160, 160]
    anchors = np.load(out / "model_anchors.npy")
    assert anchors.shape == (model.output("cls_logits").get_partial_shape()[1].get_length(), 4)
    assert report["ovms"]["precision"] == "fp32" and report["model"]["omg_size"] == [64, 64]


def test_reexport_replaces_a_previous_export(tiny_checkpoint, tiny_dataset, tmp_path):
    out = tmp_path / "again"
    assert run_tiny(tiny_checkpoint, tiny_dataset, out, "--precision", "fp32", "--no-val") == 0
    (out / "stale.txt").write_text("old")
    assert run_tiny(tiny_checkpoint, tiny_dataset, out, "--precision", "fp32", "--no-val") == 0
    assert not (out / "stale.txt").exists() and (out / "FP32" / "model.xml").is_file()
    assert leftovers(tmp_path) == []


def test_a_folder_of_the_users_is_refused_and_kept(tiny_checkpoint, tiny_dataset, tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("my work")
    assert run_tiny(tiny_checkpoint, tiny_dataset, out, "--precision", "fp32", "--no-val") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and "not a babo-edge export" in err[-1]
    assert [p.name for p in out.iterdir()] == ["notes.txt"] and (out / "notes.txt").read_text() == "my work"
    assert leftovers(tmp_path) == []


def test_an_empty_folder_is_used_and_published_with_ordinary_permissions(tiny_checkpoint, tiny_dataset,
                                                                          tmp_path):
    out = tmp_path / "empty"
    out.mkdir()
    umask = os.umask(0o022)
    try:
        assert run_tiny(tiny_checkpoint, tiny_dataset, out, "--precision", "fp32", "--no-val") == 0
    finally:
        os.umask(umask)
    assert (out / "FP32" / "model.xml").is_file() and pipeline.is_previous_export(out)
    assert stat.S_IMODE(out.stat().st_mode) == 0o755


def test_a_folder_that_appears_during_the_export_is_not_replaced(tiny_checkpoint, tiny_dataset, tmp_path,
                                                                   monkeypatch, capsys):
    out = tmp_path / "raced"
    real_run = pipeline._Export.run

    def export_while_the_user_writes(self):
        report = real_run(self)
        out.mkdir()
        (out / "theirs.txt").write_text("x")
        return report
    monkeypatch.setattr(pipeline._Export, "run", export_while_the_user_writes)
    assert run_tiny(tiny_checkpoint, tiny_dataset, out, "--precision", "fp32", "--no-val") == 2
    assert [p.name for p in out.iterdir()] == ["theirs.txt"] and leftovers(tmp_path) == []


def test_fewer_calibration_images_than_asked_warns_and_continues(tiny_checkpoint, tiny_dataset, tmp_path, capsys):
    out = tmp_path / "few"
    code = to_ir_main([str(tiny_checkpoint), "--output", str(out), "--calib", str(tiny_dataset / "images" / "calib"),
                       "--subset-size", "50", "--precision", "fp32,int8", "--no-val", "--parity-images", "2"])
    assert code == 0
    assert "4 calibration images found, 50 asked for" in capsys.readouterr().err
    assert json.loads((out / REPORT_FILE).read_text())["quantization"]["calibration_images"] == 4


# --- errors: one line, exit 2, nothing written -------------------------------------------------

def error_cases(tmp_path: Path, checkpoint: Path, dataset: Path) -> dict[str, tuple[list[str], str]]:
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a checkpoint")
    empty = tmp_path / "empty_calib"
    empty.mkdir()
    unreadable = tmp_path / "bad_calib"
    unreadable.mkdir()
    (unreadable / "a.jpg").write_bytes(b"\x00" * 64)
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    return {
        "missing checkpoint": ([str(tmp_path / "nope.pt")], "nope.pt"),
        "corrupt checkpoint": ([str(corrupt)], "corrupt.pt"),
        "empty calibration folder": ([str(checkpoint), "--calib", str(empty)], "no readable images"),
        "unreadable calibration folder": ([str(checkpoint), "--calib", str(unreadable)], "no readable images"),
        "unwritable output": ([str(checkpoint), "--output", str(blocker / "out")], "cannot write"),
        "unsupported input size": ([str(checkpoint), "--input-size", "100"], "unsupported input size 100"),
    }


@pytest.mark.parametrize("case", ["missing checkpoint", "corrupt checkpoint", "empty calibration folder",
                                  "unreadable calibration folder", "unwritable output", "unsupported input size"])
def test_bad_input_is_one_line_and_writes_nothing(case, tiny_checkpoint, tiny_dataset, tmp_path, capsys):
    work = tmp_path / "work"
    work.mkdir()
    args, message = error_cases(work, tiny_checkpoint, tiny_dataset)[case]
    out = work / "out"
    if "--output" not in args:
        args += ["--output", str(out)]
    with pytest.warns(UserWarning) if case == "unreadable calibration folder" else nullcontext():
        code = to_ir_main(args + ["--no-val"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err[-1].startswith("error: ") and message in err[-1]
    assert not out.exists() and leftovers(work) == []


def test_default_val_of_other_classes_is_skipped_with_a_warning(tmp_path, capsys):
    torch.manual_seed(0)  # untrained weights: near-tied scores must not depend on the tests run before
    config = ModelConfig(num_classes=2, input_size=(64, 64), omg_size=(64, 64), width=0.5)
    checkpoint = save_checkpoint(tmp_path / "two.pt", build_model(config).eval(), config, ["a", "b"])
    code = to_ir_main([str(checkpoint), "--precision", "fp32", "--parity-images", "1", "--subset-size", "1"])
    assert code == 0
    assert "accuracy not measured" in capsys.readouterr().err
    report = json.loads((tmp_path / "two_ir" / REPORT_FILE).read_text())
    assert report["accuracy"] is None


def test_ctrl_c_leaves_nothing(tiny_checkpoint, tiny_dataset, tmp_path, monkeypatch, capsys):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(pipeline, "quantize_int8", interrupted)
    out = tmp_path / "out"
    assert run_tiny(tiny_checkpoint, tiny_dataset, out, "--no-val") == 130
    assert "nothing written" in capsys.readouterr().err
    assert not out.exists() and leftovers(tmp_path) == []


def test_export_at_another_size_leaves_the_callers_model_as_it_was(tiny_checkpoint, tiny_dataset, tmp_path):
    model, checkpoint = load_model(tiny_checkpoint)
    config = options.export_config(checkpoint.config, 192)
    assert config.omg_size == (96, 96) and model.omg_size == (64, 64)
    calib = CalibrationImages(config.input_size, 2, tiny_dataset)
    report = pipeline.export_all(model, checkpoint, tiny_checkpoint, tmp_path / "big", calib, None, config,
                                 options.ExportOptions(precisions=("fp32",), parity_images=1))
    assert model.omg_size == (64, 64)
    written = json.loads((tmp_path / "big" / REPORT_FILE).read_text())
    assert written == asdict(report) and written["model"]["omg_size"] == [96, 96]
    assert (written["schema"], written["version"]) == ("babo-edge/export-report", 2)
    assert set(written["seconds"]) == {"onnx", "convert", "parity", "ovms", "total"} and report.accuracy is None
