"""Train a BABO model: `python train/train.py --mode e2e --input-size 320 --epochs 30 --out runs/babo`.

Modes: omg (OMG alone), vanilla (detector alone), pipeline (detector on fixed masks), e2e (joint).
`--config FILE.json` loads a full TrainConfig (as written into every checkpoint's metadata);
flags given on the command line override it. Launch with `torchrun --nproc_per_node N` for
DistributedDataParallel (NCCL on GPUs, gloo on CPUs); a plain launch trains in one process.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch starts OpenMP: see configure_cpu


from dataclasses import replace

from babo_edge.errors import run_cli
from babo_edge.models.cli import parse_size
from babo_edge.train.options import BINARIZE, BN_MODES, MODES, PruneSpec


def parse_ohnem(text: str) -> float:
    """'1:3' (positives:negatives, paper Table 1) -> 3.0 negatives per positive."""
    try:
        pos, neg = (float(v) for v in text.split(":"))
        return neg / pos
    except ValueError:
        raise argparse.ArgumentTypeError(f"OHNEM ratio must look like 1:3, got {text!r}") from None


def prune_spec(text: str) -> str:
    """Validated --prune text (kept as text: it is stored in the TrainConfig)."""
    try:
        PruneSpec.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def build_config(args: argparse.Namespace):
    """The TrainConfig of the command line: --config's, then the flags given."""
    from babo_edge.train.engine import TrainConfig

    config = TrainConfig.from_dict(json.loads(Path(args.config).read_text())) if args.config else TrainConfig()
    model = config.model
    for flag, key in (("arch", "arch"), ("width", "width"), ("input_size", "input_size"),
                      ("omg_size", "omg_size"), ("argmax", "argmax"), ("first_prior_size", "first_prior_size")):
        value = getattr(args, flag)
        if value is not None:
            model = replace(model, **{key: value})
    mode = args.mode or config.mode
    source = args.mask_source or config.mask_source
    has_omg = mode in ("omg", "e2e") or (mode == "pipeline" and source == "omg")
    if args.binarize is not None:
        model = replace(model, binarize="bireal")
    if args.input_size is not None and args.omg_size is None:  # the paper's OMG runs at half size
        model = replace(model, omg_size=(model.input_size[0] // 2, model.input_size[1] // 2))
    model = replace(model, omg=has_omg, omg_size=(model.omg_size or (model.input_size[0] // 2, model.input_size[1] // 2))
                    if has_omg else None)
    omg_loss = config.omg_loss
    if args.mask_dilation is not None:
        omg_loss = replace(omg_loss, dilation=args.mask_dilation)
    if args.ohnem is not None:
        omg_loss = replace(omg_loss, negatives_per_positive=args.ohnem)
    if args.pos_weight is not None:
        omg_loss = replace(omg_loss, positive_weight=args.pos_weight)
    overrides = {k: getattr(args, k) for k in (
        "data", "split", "mask_gt", "init", "omg_init", "epochs", "batch_size", "optimizer", "lr",
        "weight_decay", "schedule", "steps", "warmup_iters", "omg_loss_weight", "workers", "seed",
        "out", "max_iters", "bn", "threads", "binarize", "fg_ratio_target", "fg_ratio_weight", "prune")
        if getattr(args, k) is not None}
    if args.no_mask_aware_loss:
        overrides["mask_aware_loss"] = False
    return replace(config, mode=mode, mask_source=source, model=model, omg_loss=omg_loss, **overrides)


@run_cli(also=(ValueError, OSError))
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", help="TrainConfig JSON; flags override it")
    p.add_argument("--mode", choices=MODES)
    p.add_argument("--data", help="COCO-format folder (default: the built-in synthetic dataset)")
    p.add_argument("--split")
    p.add_argument("--arch")
    p.add_argument("--width", type=float)
    p.add_argument("--input-size", type=parse_size)
    p.add_argument("--omg-size", type=parse_size)
    p.add_argument("--argmax", choices=("sg", "soft"))
    p.add_argument("--first-prior-size", type=float,
                   help="SSDLite: smallest prior as a fraction of the input side (default 48/320)")
    p.add_argument("--mask-source", help="pipeline: gt-instance, gt-box, sr, random:<r>, omg")
    p.add_argument("--mask-gt", choices=("instance", "box"), help="GT masks that supervise the OMG")
    p.add_argument("--mask-dilation", type=int, help="MD kernel size at the OMG's input size (Table 1)")
    p.add_argument("--ohnem", type=parse_ohnem, help="OHNEM positives:negatives, e.g. 1:3")
    p.add_argument("--pos-weight", type=float, help="LW: loss weight of foreground pixels")
    p.add_argument("--omg-loss-weight", type=float)
    p.add_argument("--fg-ratio-target", type=float, help="e2e: penalise an OMG FG-ratio above this (0..1)")
    p.add_argument("--fg-ratio-weight", type=float, help="weight of that penalty (default 10)")
    p.add_argument("--no-mask-aware-loss", action="store_true",
                   help="train blacked-out anchors too (the stock SSD loss; for comparison)")
    p.add_argument("--bn", choices=BN_MODES, help="detector BatchNorm: frozen statistics, train, or auto "
                                                  "(frozen when fine-tuning a checkpoint on masks)")
    p.add_argument("--binarize", choices=BINARIZE,
                   help="binarized detector: plain (sign + STE) or bidet (+ IB and sparse-prior losses)")
    p.add_argument("--threads", type=int, help="CPU threads (default: every core)")
    p.add_argument("--init", help="checkpoint to initialise from")
    p.add_argument("--omg-init", help="checkpoint whose OMG weights are loaded")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--optimizer", choices=("sgd", "adam"))
    p.add_argument("--lr", type=float)
    p.add_argument("--weight-decay", type=float)
    p.add_argument("--schedule", choices=("step", "poly", "cosine"))
    p.add_argument("--steps", type=lambda s: tuple(int(v) for v in s.split(",")), help="e.g. 16,22")
    p.add_argument("--warmup-iters", type=int)
    p.add_argument("--workers", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--out")
    p.add_argument("--max-iters", type=int)
    p.add_argument("--prune", type=prune_spec, metavar="SPEC",
                   help="magnitude:R[:scope] (sparsity ramps to R while training) or channels:R[:scope] "
                        "(channels removed once at start, then fine-tuned); scope backbone|heads|all")
    p.add_argument("--resume", help="checkpoint written by a previous run (restores the optimizer)")
    args = p.parse_args(argv)
    # torch and the training loop only now: --help and argument errors stay fast.
    from babo_edge.train.engine import train

    config = build_config(args)
    last = train(config, resume=args.resume)
    print(f"checkpoint: {last}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
