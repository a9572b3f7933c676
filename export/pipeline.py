"""The whole export of one checkpoint into one folder, checked, reported and published atomically.

    DIR/model.onnx                 ONNX (opset 17), checked with onnx.checker
    DIR/FP32/model.xml|bin         OpenVINO IR, metadata in rt_info["model_info"]
    DIR/FP16/model.xml|bin         FP16 weights, for GPU / NPU
    DIR/INT8/model.xml|bin         NNCF INT8, mask path kept exact
    DIR/ovms/config.json, DIR/ovms/<name>/1/model.xml|bin   an OpenVINO Model Server repository
    DIR/export_report.json         times, sizes, parity, FP32-vs-INT8 accuracy, MAC*, versions

Everything is written into a hidden sibling folder which replaces DIR only at the end, so an
error or Ctrl-C leaves DIR as it was. ONNX and the FP32 IR must match PyTorch within
FP32_TOLERANCE (a binarized model's with the IR's binary signs forced, see export.parity);
FP16 and INT8 are reported, their masks must be exactly 0/1, and INT8 is
refused by `export.quantize` when its graph check fails.
"""
from __future__ import annotations

import functools
import json
import os
import re
import shutil
import socket
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, replace
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
from babo_edge.export.parity import (BINARY_MASK_ONLY, FP32_TOLERANCE, Parity, Runner, compare, decoding_runner,
                           onnxruntime_runner, openvino_runner, sign_forced_runners, torch_runner)
from babo_edge.export.report import FREE_SIGNS, REPORT_FILE, REPORT_SCHEMA, ExportReport
from babo_edge.export.quantize import quantize_int8, quantize_int8_with_accuracy_control
from babo_edge.models.builders import ModelConfig
from babo_edge.models.checkpoint import Checkpoint
from babo_edge.models.detector import BABODetector
from babo_edge.artifacts import ir_path
from babo_edge.runtime.detector import binary_safe_properties, openvino_message
from babo_edge.runtime.sparsity import conv_layers, instrument, layer_counts

TOLERANCES = {"onnx": FP32_TOLERANCE, "fp32": FP32_TOLERANCE, "fp16": BINARY_MASK_ONLY, "int8": BINARY_MASK_ONLY,
              "fp32" + FREE_SIGNS: BINARY_MASK_ONLY, "fp16" + FREE_SIGNS: BINARY_MASK_ONLY}


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
               work: Path | None = None) -> ExportReport:
    """Exports `model` (its OMG resized to `config`) into `output` and returns the report.

    `work`: a folder made by `prepare_output` (made here otherwise); it is removed on any error,
    KeyboardInterrupt included."""
    output = Path(output)
    work = work or prepare_output(output)
    omg_size = model.omg_size  # the export resizes the OMG input to `config`; the caller's model is restored
    try:
        model.omg_size = config.omg_size if model.omg is not None else None
        report = _Export(model, checkpoint, checkpoint_path, work, calibration, validation, config, options).run()
        publish(work, output)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    finally:
        model.omg_size = omg_size
    return report


def _stage(name: str):
    """Times a stage method into `self.report.seconds[name]`, added up if it runs twice."""
    def decorate(method):
        @functools.wraps(method)
        def timed(self, *args, **kwargs):
            started = time.perf_counter()
            try:
                return method(self, *args, **kwargs)
            finally:
                seconds = self.report.seconds
                seconds[name] = seconds.get(name, 0.0) + time.perf_counter() - started
        return timed
    return decorate


class _Export:
    """One export into `work`, stage by stage: each stage reads what the earlier ones left on
    `self` (the ONNX file, the OpenVINO model, the saved IRs, the runners) and fills its part
    of the report."""

    def __init__(self, model: BABODetector, checkpoint: Checkpoint, checkpoint_path: str | os.PathLike,
                 work: Path, calibration: Sequence[np.ndarray], validation: CocoDetection | None,
                 config: ModelConfig, options: ExportOptions):
        self.model, self.checkpoint, self.work = model, checkpoint, work
        self.checkpoint_path = checkpoint_path
        self.calibration, self.validation, self.config, self.options = calibration, validation, config, options
        self.input_hw = tuple(config.input_size)
        self.report = ExportReport(
            checkpoint=str(checkpoint_path),
            model={"arch": config.arch, "width": config.width, "input_size": list(self.input_hw),
                   "omg_size": list(config.omg_size) if model.omg is not None else None,
                   "classes": checkpoint.class_names},
            options={**asdict(options), "precisions": list(options.precisions)},
            tolerances={name: asdict(t) for name, t in TOLERANCES.items()},
            versions=tool_versions())
        self.onnx_path = work / "model.onnx"
        self.irs: dict[str, Path] = {}
        self.models: dict[str, ov.Model] = {}
        self.runners: dict[str, Runner] = {}
        self.parities: dict[str, Parity] = {}
        self.parity_images = [calibration[i] for i in range(min(options.parity_images, len(calibration)))]

    def run(self) -> ExportReport:
        started = time.perf_counter()
        self.onnx()
        self.convert()
        self.parity()
        if "int8" in self.options.precisions:
            self.int8()
        self.check_tolerances()
        if self.validation is not None:
            self.accuracy()
        self.ovms()
        self.report.files = {path.relative_to(self.work).as_posix(): path.stat().st_size
                             for path in sorted(self.work.rglob("*")) if path.is_file()}
        self.report.seconds["total"] = time.perf_counter() - started  # stages plus compiling for parity
        self.report.write(self.work)
        return self.report

    def decoded(self, runner: Runner) -> Runner:
        return decoding_runner(runner, self.model, self.input_hw) if self.options.raw_outputs else runner

    @_stage("onnx")
    def onnx(self) -> None:
        export_onnx(self.model, self.input_hw, self.onnx_path, self.options.dynamic_batch, self.options.raw_outputs)

    @_stage("convert")
    def convert(self) -> None:
        ov_model = convert(self.onnx_path)
        info = model_info(self.model, self.config, self.checkpoint.class_names, ov_model)
        set_model_info(ov_model, replace(info, outputs="raw" if self.options.raw_outputs else DETECTIONS))
        self.models["fp32"] = ov_model
        self.irs = {precision: save_ir(ov_model, ir_path(self.work, precision), precision)
                    for precision in ("fp32", "fp16") if precision in self.options.precisions}

    @_stage("parity")
    def parity(self) -> None:
        """ONNX and the saved IRs against PyTorch; INT8 and the accuracy compare against the FP32
        IR, so its runner is made whether it is saved or not."""
        reference = self.decoded(torch_runner(self.model, raw=self.options.raw_outputs))
        # A binarized model's ONNX holds org.openvinotoolkit::FakeQuantize, which onnxruntime lacks.
        if not self.config.binarize:
            self.runners["onnx"] = self.decoded(onnxruntime_runner(self.onnx_path))
        self.runners |= {precision: self.decoded(openvino_runner(compile_fp32(path)))
                         for precision, path in self.irs.items()}
        for name, runner in self.runners.items():
            if self.config.binarize and name in self.irs:  # checked with the IR's signs, reported without
                self.parities[f"{name}{FREE_SIGNS}"] = compare(reference, runner, self.parity_images)
                forced = sign_forced_runners(self.model, ov.Core().read_model(self.irs[name]), compile_fp32,
                                             self.options.raw_outputs)
                self.parities[name] = compare(*map(self.decoded, forced), self.parity_images)
            else:
                self.parities[name] = compare(reference, runner, self.parity_images)
        self.runners.setdefault("fp32", self.decoded(openvino_runner(compile_fp32(self.models["fp32"]))))

    @_stage("int8")
    def int8(self) -> None:
        options, fp32 = self.options, self.models["fp32"]
        if options.max_ap_drop is None:
            result = quantize_int8(fp32, self.calibration, options.preset, options.subset_size)
        else:
            def ap(compiled, indices) -> float:
                return ap_of(self.decoded(openvino_runner(compiled)), self.validation, self.input_hw, list(indices))
            result = quantize_int8_with_accuracy_control(fp32, self.calibration, self.val_indices(), ap,
                                                         options.max_ap_drop, options.preset, options.subset_size)
        summary = {"method": "quantize" if options.max_ap_drop is None else "quantize_with_accuracy_control",
                   "preset": options.preset, "calibration_images": min(options.subset_size, len(self.calibration)),
                   "max_ap_drop": options.max_ap_drop, "ignored_nodes": len(result.ignored_scope.names),
                   "fake_quantize_nodes": sum(op.get_type_name() == "FakeQuantize"
                                              for op in result.model.get_ordered_ops())}
        self.report.quantization = summary
        set_model_info(result.model, {"quantization": summary})
        self.irs["int8"] = save_ir(result.model, ir_path(self.work, "int8"), "int8")
        self.models["int8"] = result.model
        self.runners["int8"] = self.decoded(openvino_runner(compile_cpu(result.model)))
        self.parities["int8"] = compare(self.runners["fp32"], self.runners["int8"], self.parity_images)

    def check_tolerances(self) -> None:
        for name, parity in self.parities.items():
            self.report.parity[name] = parity.as_dict()
            problems = parity.violations(TOLERANCES[name])
            if problems:
                self.report.failures[name] = problems

    def val_indices(self) -> list[int]:
        count, asked = len(self.validation), self.options.val_images
        return list(range(count if asked is None else min(asked, count)))

    @_stage("accuracy")
    def accuracy(self) -> None:
        """The FP32 and INT8 IRs on the validation split. Detections and masks come from the
        deployed runner; the zero counts from an instrumented copy run on the same input, because
        watching conv inputs keeps the CPU plugin from fusing some INT8 ops and changes rounding."""
        runners = {}
        for name, ov_model in self.models.items():
            compile_model = compile_fp32 if name == "fp32" else compile_cpu
            counted = openvino_runner(compile_model(instrument(ov_model)))
            layers = conv_layers(ov_model)
            deployed = self.runners[name]
            runners[name] = outputs_runner(
                lambda images, deployed=deployed, counted=counted: {**counted(images), **deployed(images)},
                self.input_hw, lambda outputs, layers=layers: layer_counts(outputs, layers)[0])
        indices = self.val_indices()
        results = evaluate_runners(runners, self.validation, self.input_hw, indices=indices)
        section = {"ann_file": str(self.validation.ann_file), "images": len(indices),
                   **{name: asdict(result) for name, result in results.items()}}
        if "int8" in results:
            section["ap_drop"] = results["fp32"].metrics["AP"] - results["int8"].metrics["AP"]
            section["mask_iou"] = results["int8"].mask_iou
        self.report.accuracy = section

    @_stage("ovms")
    def ovms(self) -> None:
        served = "int8" if "int8" in self.irs else next(iter(self.irs))
        ovms = write_ovms_repository(self.work / "ovms", ovms_name(self.checkpoint_path), self.irs[served])
        self.report.ovms = {**ovms, "precision": served}


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
