"""Evaluate checkpoints side by side: `python train/evaluate.py CKPT [CKPT ...] [--data DIR]`.

Prints one paper-style row per checkpoint and mask source (COCO AP, FG-ratio, instance
recall@0.5, zeros%, GMAC, GMAC*) and optionally writes every row with its full MAC report as
JSON. Several mask sources give the paper's Table 2 layout in one command:
`--mask-source none,gt-instance,gt-box,sr,random:0.3,random:0.5,omg`.
"""
from __future__ import annotations

import argparse
import os
import sys
from dataclasses import asdict
from pathlib import Path


os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch starts OpenMP: see configure_cpu

from babo_edge.errors import run_cli
from babo_edge.models.cli import positive_int, write_json


@run_cli(also=(ValueError,))
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", nargs="+", help="checkpoint files (models/checkpoint.py format)")
    parser.add_argument("--data", help="COCO-format dataset folder with instances_<split>.json and "
                                       "images/<split>/ (default: the built-in synthetic dataset)")
    parser.add_argument("--split", default="val")
    parser.add_argument("--mask-source",
                        help="comma list of omg, none, gt-instance, gt-box, sr, random:<fg-ratio> (default: omg, "
                             "or none for a checkpoint without OMG; 'omg' is skipped for those)")
    parser.add_argument("--threads", type=positive_int, help="CPU threads (default: every core)")
    parser.add_argument("--batch-size", type=positive_int, default=8)
    parser.add_argument("--limit", type=positive_int, help="evaluate only the first N images")
    parser.add_argument("--json", type=Path, help="write every row (metrics + MAC report) here")
    args = parser.parse_args(argv)
    # torch and the evaluator only now: --help and argument errors stay fast.
    from babo_edge.model import BaboModel
    from babo_edge.train.engine import configure_cpu
    from babo_edge.train.evaluation import format_table
    from babo_edge.train.masks import check_source

    # Everything that can be wrong with the arguments is checked before the first image is run.
    configure_cpu(args.threads)
    sources = [None] if args.mask_source is None else [check_source(s.strip()) for s in args.mask_source.split(",")]
    models = [BaboModel.load(path) for path in args.checkpoints]
    runs = []  # (checkpoint, row name, model, mask source)
    for path, model in zip(args.checkpoints, models):
        for source in sources:
            if source == "omg" and model.network.omg is None and len(sources) > 1:
                continue  # Table 2 layout: the OMG row belongs to the models that have one
            runs.append((path, path if len(sources) == 1 else f"{path} [{source}]", model, source))
    for _, _, model, source in runs:
        model.check_evaluation(args.data, split=args.split, mask_source=source)

    rows = [(path, name, model.evaluate(args.data, split=args.split, mask_source=source,
                                        batch_size=args.batch_size, limit=args.limit))
            for path, name, model, source in runs]
    print(format_table([(name, result) for _, name, result in rows]))
    if args.json:  # each row names its mask source (EvaluationReport.mask_source)
        write_json(args.json, {"ann_file": rows[0][2].ann_file, "split": args.split,
                               "rows": [{"checkpoint": path, **asdict(result)} for path, _, result in rows]})
        print(f"results written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
