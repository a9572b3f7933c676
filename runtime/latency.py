"""Latency, throughput and MAC* of babo-edge IRs on one device, measured in one run so the rows compare.

Per (model, precision, device) row: compile time, first inference, latency (PERFORMANCE_HINT
LATENCY, one request, synchronous, after warm-up: median, p90, p99, mean), throughput
(PERFORMANCE_HINT THROUGHPUT, an AsyncInferQueue of the plugin's optimal number of requests),
GMAC and GMAC* averaged over the frames (the in-graph zero counters of runtime.sparsity, compiled
separately so they never slow the timed runs) and what those counters cost. Frames are real
images: the mask, hence the sparsity, depends on content. Optional PyTorch eager rows give the
reference the export is meant to beat.

Ratios are row / reference: "latency 0.50x" is twice as fast, "throughput 2.00x" twice as many
frames/s. The reference is the first row, and for other precisions the FP32 IR of the same model
on the same device. Timing primitives are in runtime.timing, the text tables in
runtime.latency_table, the regression gate in runtime.gate.

Torch-free (openvino, numpy, opencv): torch and the models package's networks are imported only
inside `benchmark_pytorch`, the dataset tools only inside `load_val_frames`.
"""
from __future__ import annotations

import math
import os
import platform
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import cv2
import numpy as np
import openvino as ov
from tqdm import tqdm

from babo_edge.errors import BaboError
from babo_edge.models.accounting import figures
from babo_edge.artifacts import EXPORT_SUFFIX, IR_FILE, PRECISIONS, ZOO, default_export_dir, ir_path
from babo_edge.runtime.detector import (Detector, binary_safe_properties, compile_config, openvino_message, parse_model_info,
                                        preprocess, read_ir, read_model_info)
from babo_edge.runtime.sparse import ROI_STRIDE, SparsePlan
from babo_edge.runtime.sparsity import SparsityCounter, instrument, measure_overhead
from babo_edge.runtime.timing import WARMUP_RUNS, interleaved_medians, latency_stats, measure_throughput, timed_calls, warm_up

SCHEMA = "babo-edge/benchmark"
VERSION = 1
PYTORCH = "pytorch"  # the precision label of a PyTorch eager (FP32) row
DEFAULT_MODELS = tuple(default_export_dir(ZOO / f"{name}.pt") for name in ("vanilla-ssdlite-256", "babo-ssdlite-256"))


@dataclass(kw_only=True)
class BenchmarkRow:
    """One measured (model, precision, device). Times in ms; `latency_ms` median/p90/p99/mean of
    the LATENCY-hint runs; throughput (THROUGHPUT hint) None for PyTorch rows; GMAC, GMAC*, zeros
    and FG-ratio averaged over the frames, counted on `sparsity_device`; `vs_first` / `vs_fp32`
    the ratios of `relative` (None where there is no reference)."""
    runtime: str  # openvino or pytorch
    model: str
    precision: str
    device: str
    source: str
    input_shape: str
    inference_precision: str | None
    threads: int | None
    compile_ms: float  # PyTorch: the checkpoint's load
    first_inference_ms: float
    latency_ms: dict[str, float]
    latency_runs: int
    throughput_fps: float | None
    infer_requests: int | None
    throughput_frames: int | None
    gmac: float
    gmac_star: float
    zero_ratio: float
    fg_ratio: float | None
    sparsity_device: str
    counter_overhead: float | None
    vs_first: dict[str, float | None] | None = None
    vs_fp32: dict[str, float | None] | None = None


@dataclass(kw_only=True)
class BenchmarkReport:
    """The benchmark's report; `asdict` is the JSON the table, the plots and the gate read."""
    schema: str = SCHEMA
    version: int = VERSION
    created: str
    machine: dict
    settings: dict
    rows: list[BenchmarkRow]


class BenchmarkError(BaboError, ValueError):
    """A one-line reason the benchmark cannot run (bad model path, baseline, checkpoint)."""


@dataclass(frozen=True)
class Target:
    """One IR to measure. `precision` None: read from the IR's metadata."""

    name: str
    xml: Path
    precision: str | None


@dataclass(frozen=True)
class Settings:
    device: str = "CPU"
    frames: int = 32  # distinct val images; every timed phase runs over all of them at least once
    duration: float = 5.0  # minimum seconds of each timed phase (latency, throughput)
    overhead_runs: int = 20  # runs of runtime.sparsity.measure_overhead


# --- what to measure ---

def model_name(folder: Path) -> str:
    """The name rows are matched by: the export folder without export/to_ir.py's "_ir" suffix,
    i.e. the checkpoint stem, which PyTorch rows use too."""
    name = folder.resolve().name
    return name[:-len(EXPORT_SUFFIX)] if name.endswith(EXPORT_SUFFIX) and len(name) > len(EXPORT_SUFFIX) else name


def shown(path: Path) -> str:
    """`path` relative to the working directory when below it (for messages and commands)."""
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def export_command(folder: Path) -> str:
    """The command that makes the export folder `folder`."""
    checkpoint = folder.with_name(model_name(folder) + ".pt")
    if folder.name.endswith(EXPORT_SUFFIX) and checkpoint.is_file():
        return f"python export/to_ir.py {shown(checkpoint)}"
    return f"python export/to_ir.py CHECKPOINT --output {shown(folder)}"


def resolve_targets(paths: Iterable[Path], precisions: Sequence[str]) -> list[Target]:
    """Export folders (one target per precision, from DIR/<PRECISION>/model.xml) and .xml files."""
    targets = []
    for path in map(Path, paths):
        if path.suffix.lower() == ".xml":
            if not path.is_file():
                raise BenchmarkError(f"{path}: no such IR file")
            in_export = path.parent.name.lower() in PRECISIONS
            targets.append(Target(model_name(path.parent.parent) if in_export else path.stem, path,
                                  path.parent.name.lower() if in_export else None))
            continue
        if not path.is_dir():
            raise BenchmarkError(f"{shown(path)}: no such export folder; make it with: {export_command(path)}")
        present = [p for p in PRECISIONS if ir_path(path, p).is_file()]
        for precision in precisions:
            if precision not in present:
                raise BenchmarkError(f"{shown(path)} has no {precision.upper()}/{IR_FILE} (precisions present: "
                                     f"{', '.join(present) or 'none'}); choose with --precision")
            targets.append(Target(model_name(path), ir_path(path, precision), precision))
    return targets


def default_model_folders(candidates: Sequence[Path] = DEFAULT_MODELS) -> tuple[list[Path], list[str]]:
    """(the default export folders present, one note per missing one with the command that makes it)."""
    present = [folder for folder in candidates if folder.is_dir()]
    notes = [f"{shown(folder)} not found; make it with: {export_command(folder)}"
             for folder in candidates if not folder.is_dir()]
    return present, notes


def load_val_frames(count: int, dataset: Path | None = None, split: str = "val") -> list[np.ndarray]:
    """The first `count` images of a split (val, video) of `dataset` (default: the built-in
    dataset, generated on first use) as BGR frames, the way a camera gives them."""
    from babo_edge.calibration.coco import CocoDetection  # dataset tools: only when frames come from a dataset
    from babo_edge.calibration.synthetic import ensure_default_dataset, split_files
    images = CocoDetection(*split_files(dataset or ensure_default_dataset(), split))
    return [cv2.cvtColor(images[i].image, cv2.COLOR_RGB2BGR) for i in range(min(count, len(images)))]


# --- sparsity ---

def count_sparsity(model: ov.Model, inputs: Sequence[np.ndarray], device: str, overhead_runs: int,
                   core: ov.Core) -> dict:
    """The sparsity fields of a BenchmarkRow: GMAC, GMAC*, zeros and FG-ratio averaged over
    `inputs`, and the counters' latency overhead.
    Counted on `device`; on a device that cannot compile the counters (int32 reductions) they
    run on the CPU instead, said so in `sparsity_device`, with no overhead figure."""
    config = {"PERFORMANCE_HINT": "LATENCY"}
    counted_on, overhead = device, None
    try:
        compiled = core.compile_model(instrument(model), device, binary_safe_properties(model, device, config))
    except RuntimeError as e:
        print(f"note: the zero counters do not compile on {device} ({openvino_message(e)}); counting on CPU",
              file=sys.stderr)
        counted_on, compiled = "CPU", core.compile_model(instrument(model), "CPU", binary_safe_properties(model, "CPU", config))
    counter = SparsityCounter.from_model(model)
    for item in inputs:
        counter.add(compiled(item))
    if counted_on == device:
        overhead = measure_overhead(model, inputs[0], overhead_runs, device, config)["overhead"]
    report = counter.report()
    return {**figures(report["totals"]), "fg_ratio": report["fg_ratio"],
            "sparsity_device": counted_on, "counter_overhead": overhead}


# --- rows ---

def _no_phase(_: str) -> None:
    pass


def compiled_property(compiled: ov.CompiledModel, name: str):
    """A property of a compiled model, None when its plugin does not report it."""
    return compiled.get_property(name) if name in compiled.get_property("SUPPORTED_PROPERTIES") else None


def benchmark_ir(target: Target, frames: Sequence[np.ndarray], settings: Settings, core: ov.Core,
                 phase: Callable[[str], None] = _no_phase) -> BenchmarkRow:
    """One IR row: the timed runs, then the counters on their own compiled copy. `phase` is told
    what is running (progress display)."""
    model = read_ir(target.xml, core)
    phase("compile")
    started = time.perf_counter()
    detector = Detector(model, settings.device, hint="LATENCY", num_requests=1, core=core)
    compile_ms = 1000 * (time.perf_counter() - started)
    inputs = [preprocess(frame, detector.input_hw) for frame in frames]
    phase("latency")
    first_ms = 1000 * timed_calls(detector.run, inputs[:1], 0.0, 1)[0]
    warm_up(detector.run, inputs)
    latencies = timed_calls(detector.run, inputs, settings.duration, len(inputs))
    inference_precision = compiled_property(detector.compiled, "INFERENCE_PRECISION_HINT")
    timed = {"runtime": "openvino", "model": target.name, "precision": target.precision or detector.info.precision,
             "device": detector.device, "source": str(target.xml), "input_shape": str(model.inputs[0].get_partial_shape()),
             "inference_precision": None if inference_precision is None else inference_precision.get_type_name(),
             "threads": compiled_property(detector.compiled, "INFERENCE_NUM_THREADS"),
             "compile_ms": compile_ms, "first_inference_ms": first_ms,
             "latency_ms": latency_stats(latencies), "latency_runs": len(latencies)}
    device = detector.device
    del detector  # one compiled model at a time: nothing else holds the device while timing
    phase("throughput")
    compiled = core.compile_model(model, device, binary_safe_properties(model, device, compile_config("THROUGHPUT", None, None)))
    throughput = measure_throughput(compiled, inputs, settings.duration)
    del compiled
    phase("counters")
    return BenchmarkRow(**timed, throughput_fps=throughput["fps"], infer_requests=throughput["infer_requests"],
                        throughput_frames=throughput["frames"],
                        **count_sparsity(model, inputs, device, settings.overhead_runs, core))


def benchmark_pytorch(checkpoint: Path, frames: Sequence[np.ndarray], settings: Settings,
                      threads: int | None) -> BenchmarkRow:
    """A PyTorch eager row (CPU, FP32, `model.detect`: what the IR computes) on the same frames;
    `threads`: torch.set_num_threads while timing, to match the OpenVINO rows (None: torch's
    default). Its compile time is the checkpoint's load (read + build); no throughput mode."""
    import torch  # the only torch import of runtime/: PyTorch rows are optional

    from babo_edge.models.checkpoint import CheckpointError, load_model
    from babo_edge.models.profiling import mac_report
    started = time.perf_counter()
    try:
        model, ckpt = load_model(checkpoint)
    except CheckpointError as e:
        raise BenchmarkError(str(e)) from None
    load_ms = 1000 * (time.perf_counter() - started)
    inputs = [torch.from_numpy(preprocess(frame, tuple(ckpt.config.input_size))) for frame in frames]
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads or previous_threads)
    try:
        with torch.inference_mode():
            first_ms = 1000 * timed_calls(model.detect, inputs[:1], 0.0, 1)[0]
            warm_up(model.detect, inputs)
            latencies = timed_calls(model.detect, inputs, settings.duration, len(inputs))
        report = mac_report(model, torch.cat(inputs))
        used_threads = torch.get_num_threads()
    finally:
        torch.set_num_threads(previous_threads)
    return BenchmarkRow(runtime="pytorch", model=Path(checkpoint).stem, precision=PYTORCH, device="CPU",
                        source=str(checkpoint), input_shape=str(list(inputs[0].shape)), inference_precision="f32",
                        threads=used_threads, compile_ms=load_ms, first_inference_ms=first_ms,
                        latency_ms=latency_stats(latencies), latency_runs=len(latencies),
                        throughput_fps=None, infer_requests=None, throughput_frames=None,
                        **figures(report["totals"]), fg_ratio=report["fg_ratio"],
                        sparsity_device="CPU", counter_overhead=None)


def openvino_threads(rows: Sequence[BenchmarkRow]) -> int | None:
    """The threads of the first OpenVINO CPU row, for the PyTorch rows to match."""
    return next((row.threads for row in rows if row.runtime == "openvino" and row.threads), None)


# --- the report ---

def ratio(value: float | None, reference: float | None) -> float | None:
    return None if value is None or not reference else value / reference


def relative(row: BenchmarkRow, reference: BenchmarkRow) -> dict[str, float | None]:
    """Row / reference of median latency, throughput and GMAC*."""
    return {"latency": ratio(row.latency_ms["median"], reference.latency_ms["median"]),
            "throughput": ratio(row.throughput_fps, reference.throughput_fps),
            "gmac_star": ratio(row.gmac_star, reference.gmac_star)}


def with_ratios(rows: Sequence[BenchmarkRow]) -> list[BenchmarkRow]:
    """Copies of `rows` with `vs_first` (against the first row) and `vs_fp32` (against the FP32 IR
    row of the same model and device; None for FP32 rows and when there is none)."""
    fp32 = {(row.model, row.device): row for row in rows if row.runtime == "openvino" and row.precision == "fp32"}
    result = []
    for row in rows:
        reference = fp32.get((row.model, row.device))
        compared = reference is not None and reference is not row
        result.append(replace(row, vs_first=relative(row, rows[0]),
                              vs_fp32=relative(row, reference) if compared else None))
    return result


def system_load() -> float | None:
    """The 1-minute load average: work from other processes skews every timing."""
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else None


def machine_info(core: ov.Core, device: str, torch_version: str | None, load_average: float | None) -> dict:
    def full_name(name: str) -> str:
        try:
            return core.get_property(name, "FULL_DEVICE_NAME")
        except RuntimeError:  # virtual devices (AUTO, MULTI, ...) may not report one
            return name
    affinity = getattr(os, "sched_getaffinity", None)
    return {"cpu": full_name("CPU"), "device": device, "device_name": full_name(device),
            "cores": os.cpu_count(), "usable_cores": len(affinity(0)) if affinity else os.cpu_count(),
            "load_average": load_average,
            "openvino": ov.get_version(), "python": platform.python_version(), "platform": platform.platform(),
            "torch": torch_version}


def run_benchmark(targets: Sequence[Target], frames: Sequence[np.ndarray], settings: Settings,
                  pytorch: Sequence[Path] = (), core: ov.Core | None = None) -> BenchmarkReport:
    """Measures every target, then every PyTorch checkpoint, in this order, and returns the
    report. Raises runtime.detector.ModelError,
    runtime.devices.DeviceError and BenchmarkError, each one line."""
    if not frames or not (targets or pytorch):
        raise BenchmarkError("nothing to measure: no frames" if not frames else "nothing to measure: no model")
    core = core or ov.Core()
    load_before = system_load()
    rows: list[BenchmarkRow] = []
    with tqdm(total=len(targets) + len(pytorch), unit="row", desc="benchmark", file=sys.stderr) as bar:
        for target in targets:
            bar.set_description(f"{target.name} {target.precision or ''}".strip())
            rows.append(benchmark_ir(target, frames, settings, core, bar.set_postfix_str))
            bar.update()
        for checkpoint in pytorch:
            bar.set_description(f"{Path(checkpoint).stem} PyTorch")
            rows.append(benchmark_pytorch(checkpoint, frames, settings, openvino_threads(rows)))
            bar.update()
    return BenchmarkReport(created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                           machine=machine_info(core, rows[0].device if targets else settings.device,
                                                sys.modules["torch"].__version__ if pytorch else None, load_before),
                           settings=asdict(settings) | {"frames": len(frames), "warmup_runs": WARMUP_RUNS},
                           rows=with_ratios(rows))


# --- execution modes (runtime.sparse) ---

def cpu_description() -> str:
    """CPU model and the ISA extensions that decide OpenVINO's kernels (from lscpu)."""
    import subprocess
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return platform.processor() or "unknown CPU"
    fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    flags = set(fields.get("Flags", "").split())
    isa = [flag for flag in ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8")
           if flag in flags]
    return f"{fields.get('Model name', 'unknown CPU').strip()}, {os.cpu_count()} cores, ISA: {' '.join(isa) or '-'}"


def compare_executions(targets: Sequence[Target], scenes: dict[str, Sequence[np.ndarray]], executions: Sequence[str],
                       device: str, rounds: int, core: ov.Core) -> dict:
    """Frame latency (Detector call: preprocessing, OMG, detector, post-processing) of every
    target in every execution mode on every scene. Rounds interleave the detectors (each
    round: one pass over the scene per detector) so that load from other processes spreads
    over all rows, after one untimed pass (ROI crop models are compiled on first use). Vanilla
    IRs run dense only. Rows: median / mean ms per frame and how often each path ran (empty,
    roi, dense) with the mean crop area."""
    detectors = []
    for target in targets:
        model = read_ir(target.xml, core)
        babo = parse_model_info(read_model_info(model), str(target.xml)).mask_input_hw is not None
        for execution in executions if babo else ("dense",):
            detectors.append((target, execution, Detector(model, device, hint="LATENCY", num_requests=1, core=core,
                                                          execution=execution)))
    rows = []
    for scene, frames in scenes.items():
        times: dict[int, list[float]] = {i: [] for i in range(len(detectors))}
        paths: dict[int, list[tuple[str, float]]] = {i: [] for i in range(len(detectors))}
        for _, _, detector in detectors:  # a whole pass: every crop size of the scene is compiled before timing
            for frame in frames:
                detector(frame)
        for _ in range(rounds):
            for i, (_, _, detector) in enumerate(detectors):
                for frame in frames:
                    start = time.perf_counter()
                    result = detector(frame)
                    times[i].append(time.perf_counter() - start)
                    area = 1.0 if result.roi is None else ((result.roi[2] - result.roi[0]) * (result.roi[3] - result.roi[1])
                                                            / (frame.shape[0] * frame.shape[1]))
                    paths[i].append((result.execution, 0.0 if result.execution == "empty" else area))
        for i, (target, execution, detector) in enumerate(detectors):
            ms = 1000 * np.asarray(times[i])
            ran = [path for path, _ in paths[i]]
            rows.append({"scene": scene, "model": target.name, "precision": target.precision or detector.info.precision,
                         "execution": execution, "median_ms": float(np.median(ms)), "mean_ms": float(ms.mean()),
                         "frames": len(frames), "runs": len(ms),
                         "share": {path: ran.count(path) / len(ran) for path in ("empty", "roi", "dense")},
                         "mean_area": float(np.mean([area for _, area in paths[i]]))})
    return {"cpu": cpu_description(), "device": device, "rounds": rounds, "load_average": system_load(), "rows": rows}


def crop_latency_curve(targets: Sequence[Target], device: str, rounds: int, calls: int, core: ov.Core) -> dict:
    """What a crop costs, per BABO target: the OMG plus the ROI model of k x k stride-32 cells
    (k = 1 .. the input's cells, scaled per side on non-square inputs), beside the same IR's
    dense graph and the first vanilla target's. Zero inputs (dense kernels take the same time
    whatever the values; it is the network's cost, as the "auto" cost model measures it). Rounds
    interleave every model (`interleaved_medians`); a figure is the median over rounds of the
    round's median of `calls` calls, and a ratio the median of the per-round ratios to vanilla."""
    vanilla, babo = [], []
    for target in targets:
        model = read_ir(target.xml, core)
        info = parse_model_info(read_model_info(model), str(target.xml))
        (babo if info.mask_input_hw is not None else vanilla).append((target, model, info.input_hw))
    if not vanilla or not babo:
        raise BenchmarkError("the crop curve needs a vanilla IR (the reference) and at least one BABO IR")
    config = compile_config("LATENCY", None, None)

    def timed(model: ov.Model):
        compiled = core.compile_model(model, device, config)
        feed = {port.get_any_name(): np.zeros(port.get_shape(), port.get_element_type().to_dtype())
                for port in compiled.inputs}
        return compiled.create_infer_request(), feed

    reference, reference_model, _ = vanilla[0]
    runs = {("vanilla", reference.name): timed(reference_model)}
    crops: dict[str, list[tuple[int, int]]] = {}
    for target, model, input_hw in babo:
        plan = SparsePlan(model, input_hw)
        runs[("omg", target.name)] = timed(plan.omg)
        runs[("dense", target.name)] = timed(plan.dense)
        rows, cols = plan.cells
        steps = max(rows, cols)
        crops[target.name] = [(min(math.ceil(k * rows / steps) * ROI_STRIDE, input_hw[0]),
                               min(math.ceil(k * cols / steps) * ROI_STRIDE, input_hw[1])) for k in range(1, steps + 1)]
        for crop in crops[target.name]:
            runs[("roi", target.name, crop)] = timed(plan.roi(crop))
    medians = interleaved_medians([lambda _, request=request, feed=feed: request.infer(feed) for request, feed in runs.values()],
                                  [None], rounds, calls, progress="crop curve")
    per_round = {key: medians[:, k] for k, key in enumerate(runs)}  # ms
    base = per_round[("vanilla", reference.name)]
    curves = []
    for target, _, input_hw in babo:
        omg, dense = per_round[("omg", target.name)], per_round[("dense", target.name)]
        points = [{"crop_hw": list(crop), "area": crop[0] * crop[1] / (input_hw[0] * input_hw[1]),
                   "roi_ms": float(np.median(per_round[("roi", target.name, crop)])),
                   "frame_ms": float(np.median(omg + per_round[("roi", target.name, crop)])),
                   "ratio": float(np.median((omg + per_round[("roi", target.name, crop)]) / base))}
                  for crop in crops[target.name]]
        curves.append({"model": target.name, "input_hw": list(input_hw),
                       "omg_ms": float(np.median(omg)), "omg_ratio": float(np.median(omg / base)),
                       "dense_ms": float(np.median(dense)), "dense_ratio": float(np.median(dense / base)),
                       "points": points})
    return {"cpu": cpu_description(), "device": device, "rounds": rounds, "calls": calls,
            "reference": reference.name, "reference_ms": float(np.median(base)),
            "load_average": system_load(), "curves": curves}
