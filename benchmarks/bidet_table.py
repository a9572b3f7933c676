"""Size and operation counts of checkpoints, BiDet's Table 1 columns: `python benchmarks/bidet_table.py CKPT...`.

Per checkpoint: parameter size in MB with binary conv weights at 1 bit, real GMAC, binary Gops
and the paper's MAC-equivalent count (binary ops at 1/64 of a MAC), from the one MAC report
(models/profiling.py, models/accounting.py) at the checkpoint's input size. AP comes from
train/evaluate.py, latency from benchmarks/ab_latency.py.
"""
from __future__ import annotations

import argparse
import sys

from babo_edge.errors import run_cli


@run_cli(also=(ValueError, OSError))
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", nargs="+")
    args = parser.parse_args(argv)
    import torch

    from babo_edge.models.accounting import binary_figures, figures
    from babo_edge.models.binary import parameter_bits
    from babo_edge.models.checkpoint import load_model
    from babo_edge.models.profiling import mac_report

    print("| checkpoint | size MB (binary at 1 bit) | GMAC (real) | binary Gops | GMAC-equivalent (ops/64) |")
    print("|---|---:|---:|---:|---:|")
    for path in args.checkpoints:
        model, ckpt = load_model(path)
        totals = mac_report(model.eval(), torch.zeros(1, 3, *ckpt.config.input_size))["totals"]
        f = figures(totals) | binary_figures(totals)
        print(f"| {path} | {parameter_bits(model) / 8e6:.2f} | {f['gmac']:.3f} | {f['binary_gops']:.3f} "
              f"| {f['gmac_equivalent']:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
