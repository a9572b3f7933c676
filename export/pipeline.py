"""The whole export of one checkpoint into one folder, checked, reported and published atomically.

    DIR/model.onnx                 ONNX (opset 17), checked with onnx.checker
    DIR/FP32/model.xml|bin         OpenVINO IR, metadata in rt_info["model_info"]
    DIR/FP16/model.xml|bin         FP16 weights, for GPU / NPU
    DIR/INT8/model.xml|bin         NNCF INT8, mask path kept exact
    DIR/ovms/config.json, DIR/ovms/<name>/1/model.xml|bin   an OpenVINO Model Server repository
    DIR/export_report.json         times, sizes, parity, FP32-vs-INT8 accuracy, MAC*, versions

Everything is written into a hidden sibling folder which replaces DIR only at the end, so an
error or Ctrl-C leaves DIR as it was. ONNX and the FP32 IR must match PyTorch within
FP32_TOLERANCE; FP16 and INT8 are reported, their masks must be exactly 0/1, and INT8 is
refused by `export.quantize` when its graph check fails.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import socket
import tempfile
import time
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path

import numpy as np
import openvino as ov

from babo_edge.calibration.coco import CocoDetection
from babo_edge.ir_metadata import DETECTIONS
from babo_edge.export.options import ExportError, ExportOptions
from babo_edge.export.accuracy import ap_of, outputs_runner
from babo_edge.train.evaluation import evaluate_runners
from babo_edge.export.onnx_export import export_onnx
from babo_edge.export.openvino_ir import (compile_fp32, convert, model_info, save_ir,
                                set_model_info, tool_versions)
from babo_edge.export.parity import (BINARY_MASK_ONLY, FP32_TOLERANCE, Runner, compare, decoding_runner,
                           onnxruntime_runner, openvino_runner, torch_runner)
from babo_edge.export.quantize import quantize_int8, quantize_int8_with_accuracy_control
from babo_edge.models.builders import ModelConfig
from babo_edge.models.checkpoint import Checkpoint
from babo_edge.models.detector import BABODetector
from babo_edge.artifacts import ir_path
from babo_edge.runtime.detector import binary_safe_properties, openvino_message
from babo_edge.runtime.sparsity import conv_layers, instrument, layer_counts

REPORT_FILE = "export_report.json"
REPORT_SCHEMA = "babo-edge/export-report"
REPORT_VERSION = 2  # 2: accuracy rows are train.evaluation.EvaluationReport
TOLERANCES = {"onnx": FP32_TOLERANCE, "fp32": FP32_TOLERANCE, "fp16": BINARY_MASK_ONLY, "int8": BINARY_MASK_ONLY}
def ovms_name(checkpoint_path: str | os.PathLike) -> str:
    """Model name for OVMS (its REST/gRPC URLs): the checkpoint stem, URL-safe."""
    name = "".join(c if c.isalnum() or c in "-_" else "-" for c in Path(checkpoint_path).stem)
    return name.strip("-") or "model"


EXPORT_MARKER = ".babo-edge-export"  # written into every export folder: only such a folder is ever replaced


def is_previous_export(folder: Path) -> bool:
    """True for an export folder of this package (the marker, or a report of ours from before it)."""
    if (folder / EXPORT_MARKER).is_file():
        return True
    try:
        return json.loads((folder / REPORT_FILE).read_text(encoding="utf-8")).get("schema") == REPORT_SCHEMA
    except (OSError, ValueError, AttributeError):
        return False


def check_replaceable(output: Path) -> None:
    """ExportError unless `output` is absent, an empty folder, or a previous export of this package:
    a folder of the user's is never deleted."""
    if not output.exists():
        return
    if not output.is_dir():
        raise ExportError(f"output {str(output)!r} exists and is not a folder")
    if any(output.iterdir()) and not is_previous_export(output):
        raise ExportError(f"output {str(output)!r} is a folder that is not a babo-edge export and would be "
                          f"replaced: choose a new or empty folder")


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9]", "", socket.gethostname())[:32] or "host"


def _work_prefix(output: Path) -> str:
    """`.NAME.partial-HOST-PID-`: the owner of a work folder (and of the `.old-` one `publish` makes)
    is in its name, so the folders of a process killed mid-export can be told from live ones."""
    return f".{output.name}.partial-{_host()}-{os.getpid()}-"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. another user's process
        return True
    return True


def clean_stale_work(output: Path) -> list[Path]:
    """Removes the hidden work folders beside `output` left by dead exports of this machine (SIGKILL,
    power loss) and returns them. Only folders named `.NAME.partial-HOST-PID-*` or `.NAME.old-HOST-PID-*`
    of this host whose PID is not running are touched (never a symlink, another host's folder, a live
    process's, or any other name). A stale `.old-` folder is the previous export of a run killed
    between publish's two renames: it is moved back to `output` if `output` is absent, else removed."""
    pattern = re.compile(rf"\.{re.escape(output.name)}\.(partial|old)-{re.escape(_host())}-(\d+)-[^/]+")
    try:
        entries = sorted(output.parent.iterdir(), key=lambda entry: ".old-" not in entry.name)  # .old- first
    except OSError:
        return []
    cleaned = []
    for entry in entries:
        match = pattern.fullmatch(entry.name)
        if not match or entry.is_symlink() or not entry.is_dir() or _alive(int(match.group(2))):
            continue
        if match.group(1) == "old" and not output.exists() and is_previous_export(entry):
            try:
                os.rename(entry, output)
                continue
            except OSError:
                pass
        shutil.rmtree(entry, ignore_errors=True)
        cleaned.append(entry)
    return cleaned


def prepare_output(output: str | os.PathLike) -> Path:
    """Creates the hidden work folder beside `output`; ExportError when that is impossible or when
    `output` holds something that is not a previous export. The stale work folders of killed exports
    are cleaned first (`clean_stale_work`): a work folder is only ever published by its own process."""
    output = Path(output)
    clean_stale_work(output)
    check_replaceable(output)
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=_work_prefix(output), dir=output.parent))
    except OSError as e:
        raise ExportError(f"cannot write the output folder {str(output)!r}: {e.strerror or e}") from None
    umask = os.umask(0)
    os.umask(umask)
    work.chmod(0o777 & ~umask)  # mkdtemp makes it 0700; the published folder gets ordinary permissions
    (work / EXPORT_MARKER).write_text(json.dumps({"schema": REPORT_SCHEMA}) + "\n", encoding="utf-8")
    return work


def publish(work: Path, output: Path) -> None:
    """Replaces `output` by the finished `work` folder (the old one is removed last), checked again
    so that a folder that appeared during the export is not lost either."""
    check_replaceable(output)
    old = None
    if output.exists():
        old = work.with_name(work.name.replace(".partial-", ".old-"))
        os.replace(output, old)
    os.replace(work, output)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def export_all(model: BABODetector, checkpoint: Checkpoint, checkpoint_path: str | os.PathLike,
               output: str | os.PathLike, calibration: Sequence[np.ndarray],
               validation: CocoDetection | None, config: ModelConfig, options: ExportOptions = ExportOptions(),
               work: Path | None = None) -> dict:
    """Exports `model` (its OMG resized to `config`) into `output` and returns the report.

    `work`: a folder made by `prepare_output` (made here otherwise); it is removed on any error,
    KeyboardInterrupt included."""
    output = Path(output)
    work = work or prepare_output(output)
    omg_size = model.omg_size  # the export resizes the OMG input to `config`; the caller's model is restored
    try:
        model.omg_size = config.omg_size if model.omg is not None else None
        report = _export(model, checkpoint, checkpoint_path, work, calibration, validation, config, options)
        publish(work, output)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    finally:
        model.omg_size = omg_size
    return report


def _export(model, checkpoint, checkpoint_path, work: Path, calibration, validation, config: ModelConfig,
            options: ExportOptions) -> dict:
    started = time.perf_counter()
    input_hw = tuple(config.input_size)
    report = {"schema": REPORT_SCHEMA, "version": REPORT_VERSION, "checkpoint": str(checkpoint_path),
              "model": {"arch": config.arch, "width": config.width, "input_size": list(input_hw),
                        "omg_size": list(config.omg_size) if model.omg is not None else None,
                        "classes": checkpoint.class_names},
              "options": asdict(options), "seconds": {}, "files": {}, "parity": {}, "failures": {},
              "tolerances": {name: asdict(t) for name, t in TOLERANCES.items()}, "versions": tool_versions()}
    timer = partial(_timed, report["seconds"])

    with timer("onnx"):
        onnx_path = export_onnx(model, input_hw, work / "model.onnx", options.dynamic_batch, options.raw_outputs)
    with timer("convert"):
        ov_model = convert(onnx_path)
        info = model_info(model, config, checkpoint.class_names, ov_model)
        info = replace(info, outputs="raw" if options.raw_outputs else DETECTIONS)
        set_model_info(ov_model, info)
        irs = {precision: save_ir(ov_model, ir_path(work, precision), precision)
               for precision in ("fp32", "fp16") if precision in options.precisions}

    def decoded(runner: Runner) -> Runner:
        return decoding_runner(runner, model, input_hw) if options.raw_outputs else runner

    parity_images = list(calibration[i] for i in range(min(options.parity_images, len(calibration))))
    parities = {}
    with timer("parity"):
        reference = decoded(torch_runner(model, raw=options.raw_outputs))
        # A binarized model's ONNX holds org.openvinotoolkit::FakeQuantize, which onnxruntime lacks.
        runners = {} if config.binarize else {"onnx": decoded(onnxruntime_runner(onnx_path))}
        runners |= {precision: decoded(openvino_runner(compile_fp32(path))) for precision, path in irs.items()}
        for name, runner in runners.items():
            parities[name] = compare(reference, runner, parity_images)
    # INT8 and the accuracy pass compare against FP32, saved or not.
    runners.setdefault("fp32", decoded(openvino_runner(compile_fp32(ov_model))))

    models = {"fp32": ov_model}
    if "int8" in options.precisions:
        with timer("int8"):
            int8 = _quantize(ov_model, calibration, validation, input_hw, options, decoded)
            report["quantization"] = int8.summary
            set_model_info(int8.model, {"quantization": int8.summary})
            irs["int8"] = save_ir(int8.model, ir_path(work, "int8"), "int8")
        models["int8"] = int8.model
        runners["int8"] = decoded(openvino_runner(compile_cpu(int8.model)))
        parities["int8"] = compare(runners["fp32"], runners["int8"], parity_images)

    for name, parity in parities.items():
        report["parity"][name] = parity.as_dict()
        problems = parity.violations(TOLERANCES[name])
        if problems:
            report["failures"][name] = problems

    if validation is not None:
        with timer("accuracy"):
            report["accuracy"] = _accuracy({name: (ov_model, runners[name]) for name, ov_model in models.items()},
                                           validation, input_hw, _val_indices(validation, options))

    with timer("ovms"):
        served = "int8" if "int8" in irs else next(iter(irs))
        report["ovms"] = write_ovms_repository(work / "ovms", ovms_name(checkpoint_path), irs[served])
        report["ovms"]["precision"] = served
    report["files"] = {path.relative_to(work).as_posix(): path.stat().st_size
                       for path in sorted(work.rglob("*")) if path.is_file()}
    report["seconds"]["total"] = time.perf_counter() - started  # stages plus compiling for parity
    (work / REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return report


@dataclass
class _Int8:
    model: ov.Model
    summary: dict


def _quantize(ov_model: ov.Model, calibration, validation, input_hw, options: ExportOptions, decoded) -> _Int8:
    if options.max_ap_drop is None:
        result = quantize_int8(ov_model, calibration, options.preset, options.subset_size)
    else:
        def ap(compiled, indices) -> float:
            return ap_of(decoded(openvino_runner(compiled)), validation, input_hw, list(indices))
        result = quantize_int8_with_accuracy_control(ov_model, calibration, _val_indices(validation, options), ap,
                                                     options.max_ap_drop, options.preset, options.subset_size)
    summary = {"method": "quantize" if options.max_ap_drop is None else "quantize_with_accuracy_control",
               "preset": options.preset, "calibration_images": min(options.subset_size, len(calibration)),
               "max_ap_drop": options.max_ap_drop, "ignored_nodes": len(result.ignored_scope.names),
               "fake_quantize_nodes": sum(op.get_type_name() == "FakeQuantize" for op in result.model.get_ordered_ops())}
    return _Int8(result.model, summary)


def _val_indices(validation: CocoDetection, options: ExportOptions) -> list[int]:
    count = len(validation) if options.val_images is None else min(options.val_images, len(validation))
    return list(range(count))


def _accuracy(models: dict[str, tuple[ov.Model, Runner]], validation: CocoDetection, input_hw,
              indices: list[int]) -> dict:
    """The models on the validation split: {name: (model, its deployed runner)}, "fp32" first.
    Detections and masks come from the deployed runner; the zero counts from an instrumented
    copy run on the same input, because watching conv inputs keeps the CPU plugin from fusing
    some INT8 ops and changes rounding."""
    runners = {}
    for name, (ov_model, deployed) in models.items():
        compile_model = compile_fp32 if name == "fp32" else compile_cpu
        counted = openvino_runner(compile_model(instrument(ov_model)))
        layers = conv_layers(ov_model)
        runners[name] = outputs_runner(lambda images, deployed=deployed, counted=counted: {**counted(images),
                                                                                           **deployed(images)},
                                       input_hw, lambda outputs, layers=layers: layer_counts(outputs, layers)[0])
    results = evaluate_runners(runners, validation, input_hw, indices=indices)
    section = {"ann_file": str(validation.ann_file), "images": len(indices),
               **{name: asdict(result) for name, result in results.items()}}
    if "int8" in results:
        section["ap_drop"] = results["fp32"].metrics["AP"] - results["int8"].metrics["AP"]
        section["mask_iou"] = results["int8"].mask_iou
    return section


def compile_cpu(model: ov.Model) -> ov.CompiledModel:
    """`model` as the runtime's Detector compiles it on CPU (the plugin's default precision); an
    IR this machine's plugin cannot compile is a one-line ExportError."""
    try:
        return ov.Core().compile_model(model, "CPU", binary_safe_properties(model, "CPU", {}))
    except RuntimeError as e:
        raise ExportError(f"OpenVINO cannot compile the exported model on this CPU: {openvino_message(e)}") from None


def write_ovms_repository(root: Path, name: str, xml: Path) -> dict:
    """root/<name>/1/model.xml|bin and root/config.json for `docker run -v root:/models
    openvino/model_server --config_path /models/config.json`."""
    version = root / name / "1"
    version.mkdir(parents=True)
    for suffix in (".xml", ".bin"):
        shutil.copyfile(xml.with_suffix(suffix), version / f"model{suffix}")
    config = {"model_config_list": [{"config": {"name": name, "base_path": f"/models/{name}"}}]}
    (root / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    return {"name": name, "config": "ovms/config.json"}


@contextmanager
def _timed(seconds: dict[str, float], stage: str):
    """Adds the wall time of the block to seconds[stage]."""
    started = time.perf_counter()
    try:
        yield
    finally:
        seconds[stage] = seconds.get(stage, 0.0) + time.perf_counter() - started


AP_DROP_TARGET = 0.5  # AP points, INT8 vs FP32 (issue target on the demo checkpoint)
MASK_IOU_TARGET = 0.98


def format_summary(report: dict) -> str:
    """The printed summary of an export report: stages, files, parity, accuracy and MAC*."""
    mb = 1 << 20
    lines = ["stages: " + ", ".join(f"{stage} {seconds:.1f} s" for stage, seconds in report["seconds"].items()),
             "files: " + ", ".join(f"{name} {size / mb:.1f} MB" for name, size in report["files"].items()
                                   if isinstance(size, int) and name.endswith((".onnx", ".bin"))
                                   and not name.startswith("ovms/")),
             f"OVMS: {report['ovms']['config']} serves {report['ovms']['name']} ({report['ovms']['precision']})",
             "",
             f"{'parity':<18} {'detections':>11} {'max|score|':>10} {'max|box|px':>10} {'mask IoU':>8} "
             f"{'px differ':>9} {'ok':>3}"]
    for name, parity in report["parity"].items():
        against = "vs FP32 IR" if name == "int8" else "vs PyTorch"
        lines.append(f"{name.upper():<5}{against:<13} {parity['candidate_detections']:>5}/{parity['reference_detections']:<5} "
                     f"{parity['max_score_diff']:>10.2e} {parity['max_box_diff']:>10.2e} {parity['mask_iou']:>8.4f} "
                     f"{parity['mask_mismatches']:>9} {'no' if name in report['failures'] else 'yes':>3}")
    accuracy = report.get("accuracy")
    if accuracy:
        lines += ["", f"accuracy on {accuracy['ann_file']} ({accuracy['images']} images)",
                  f"{'model':<8} {'AP':>5} {'AP50':>5} {'FG%':>5} {'recall%':>7} {'mask IoU':>8} {'zeros%':>6} "
                  f"{'OD zeros%':>9} {'GMAC':>6} {'GMAC*':>6}"]
        for name in ("fp32", "int8"):
            if name not in accuracy:
                continue
            result = accuracy[name]
            recall = result["instance_recall"]
            lines.append(
                f"{name.upper() + ' IR':<8} {result['metrics']['AP']:>5.1f} {result['metrics']['AP50']:>5.1f} "
                f"{_percent(result['fg_ratio']):>5} {_percent(recall and recall['overall']):>7} "
                f"{'-' if result['mask_iou'] is None else format(result['mask_iou'], '.4f'):>8} "
                f"{100 * result['zero_ratio']:>6.2f} {100 * result['od_zero_ratio']:>9.2f} "
                f"{result['gmac']:>6.3f} {result['gmac_star']:>6.3f}")
        if "ap_drop" in accuracy:
            iou = accuracy["mask_iou"]
            lines.append(f"INT8 vs FP32: AP drop {accuracy['ap_drop']:.2f} (target <= {AP_DROP_TARGET}), "
                         + ("no mask" if iou is None else f"mask IoU {iou:.4f} (target >= {MASK_IOU_TARGET})"))
    return "\n".join(lines)


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"
