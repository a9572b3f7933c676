"""Interleaved A/B latency of OpenVINO IRs against a reference IR, in one process.

    python benchmarks/ab_latency.py REF.xml OTHER.xml [...] [--names vanilla,babo,...] [--rounds 15]
        [--calls 40] [--frames 16] [--threads 1] [--precision-hint f32|bf16]

Every IR is compiled once (PERFORMANCE_HINT=LATENCY, one request, synchronous calls on real val
frames). Each round runs `--calls` inferences of every model, in an order rotated per round, so
a slow phase of a shared machine hits every model alike; a row gives the median over rounds of
the per-round median latency, its spread (min..max of the round medians), and the ratio to the
reference (the first IR) taken within each round: median and min..max. The machine (CPU model
and ISA from lscpu, OpenVINO version, load average) is printed first: numbers only compare
on one machine.
"""
from __future__ import annotations

import argparse
import os
import platform
import re
import subprocess
import sys
from pathlib import Path


import numpy as np
import openvino as ov

from babo_edge.runtime.detector import binary_safe_properties, preprocess
from babo_edge.runtime.latency import load_val_frames
from babo_edge.runtime.timing import interleaved_medians

ISA_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_bf16", "amx_int8", "amx_tile")


def machine() -> str:
    """CPU model, cores and the ISA extensions OpenVINO's CPU kernels choose between."""
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        lscpu = ""
    model = re.search(r"^Model name:\s*(.+)$", lscpu, re.M)
    flags = re.search(r"^Flags:\s*(.+)$", lscpu, re.M)
    present = set(flags.group(1).split()) if flags else set()
    isa = " ".join(flag for flag in ISA_FLAGS if flag in present) or "unknown"
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return (f"CPU: {model.group(1) if model else platform.processor()}, {os.cpu_count()} cores; ISA: {isa}; "
            f"OpenVINO {ov.get_version()}; load average before: {load}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("xml", nargs="+", type=Path, help="IR files; the first is the reference")
    parser.add_argument("--names", help="comma list of row names (default: the IR paths)")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--calls", type=int, default=40, help="inferences per model per round")
    parser.add_argument("--frames", type=int, default=16, help="distinct val frames cycled through")
    parser.add_argument("--threads", type=int, help="INFERENCE_NUM_THREADS (default: the plugin's)")
    parser.add_argument("--precision-hint", help="INFERENCE_PRECISION_HINT, e.g. f32 (default: the plugin's)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    names = args.names.split(",") if args.names else [str(path) for path in args.xml]
    if len(names) != len(args.xml):
        print("error: --names needs one name per IR", file=sys.stderr)
        return 2
    print(machine())
    core = ov.Core()
    config = {"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1}
    if args.threads:
        config["INFERENCE_NUM_THREADS"] = args.threads
    if args.precision_hint:
        config["INFERENCE_PRECISION_HINT"] = args.precision_hint
    # As the runtime's Detector compiles: an IR with BinaryConvolution gets the f32 hint when none is given.
    compiled = []
    for xml in args.xml:
        model = core.read_model(xml)
        compiled.append(core.compile_model(model, "CPU", binary_safe_properties(model, "CPU", config)))
    requests = [c.create_infer_request() for c in compiled]
    hw = tuple(requests[0].model_inputs[0].get_partial_shape().to_shape())[2:]
    inputs = [preprocess(frame, hw) for frame in load_val_frames(args.frames)]
    medians = interleaved_medians([request.infer for request in requests],
                                  [{0: item} for item in inputs], args.rounds, args.calls)
    ratios = medians / medians[:, :1]
    print(f"{args.rounds} rounds x {args.calls} calls per model, config {config}")
    print(f"{'model':<28} {'precision':>9} {'median ms':>9} {'spread ms':>13} {'x ref':>6} {'x ref spread':>13}")
    for m, name in enumerate(names):
        precision = compiled[m].get_property("INFERENCE_PRECISION_HINT").to_string()
        print(f"{name:<28} {str(precision):>9} {np.median(medians[:, m]):9.3f} "
              f"{medians[:, m].min():6.3f}..{medians[:, m].max():<6.3f} "
              f"{np.median(ratios[:, m]):5.2f}x {ratios[:, m].min():5.2f}..{ratios[:, m].max():.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
