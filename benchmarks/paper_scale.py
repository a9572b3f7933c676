"""Timing checkpoints for the paper's scale (issue 9, part 3): a detector with random weights and
the demo BABO checkpoint's trained OMG, plus its vanilla twin (same detector weights, no OMG).

Time does not depend on the detector's weights, but the mask does: the OMG is the trained one,
run at the export's OMG size, so the crops and empty frames are those of real masks. The class
biases favour background, as a trained detector's do, so that post-processing handles a
trained model's few candidates rather than every anchor. Export and time them with the
project's own commands (benchmarks/README.md, "The paper's scale"):

    python benchmarks/paper_scale.py --arch vgg16-ssd512 --out runs/paper-scale
    python export/to_ir.py runs/paper-scale/babo-vgg16-ssd512.pt --precision int8 --no-val ...
    python runtime/benchmark.py --model ... --execution dense,roi,auto
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

from babo_edge.errors import run_cli
from babo_edge.models.cli import parse_size

DEMO_BABO = Path(__file__).resolve().parents[1] / "models" / "zoo" / "babo-ssdlite-256.pt"
BACKGROUND_LOGIT = 6.0  # background column bias: a foreground score of ~exp(-6) before the features' noise


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", default="vgg16-ssd512", help="detector architecture (default vgg16-ssd512)")
    parser.add_argument("--input-size", type=parse_size, default=(512, 512), help="detector input, N or HxW (default 512)")
    parser.add_argument("--omg-size", type=parse_size, default=(256, 256), help="OMG input (default 256)")
    parser.add_argument("--omg-from", type=Path, default=DEMO_BABO, help="BABO checkpoint whose OMG is used")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True, help="folder for babo-ARCH.pt and vanilla-ARCH.pt")
    return parser.parse_args(argv)


def timing_checkpoints(arch: str, input_hw: tuple[int, int], omg_hw: tuple[int, int], omg_from: Path, seed: int,
                       out: Path) -> tuple[Path, Path]:
    """Writes `babo-ARCH.pt` and `vanilla-ARCH.pt` into `out`; refuses to overwrite either."""
    import torch

    from babo_edge.models.builders import ModelConfig, build_model
    from babo_edge.models.checkpoint import CheckpointError, load_checkpoint, load_weights, save_checkpoint

    paths = out / f"babo-{arch}.pt", out / f"vanilla-{arch}.pt"
    existing = [str(path) for path in paths if path.exists()]
    if existing:
        raise FileExistsError(f"{', '.join(existing)} exists: pick another --out or remove it")
    source = load_checkpoint(omg_from)
    if source.omg_state is None:
        raise CheckpointError(f"{omg_from} has no OMG: pass a BABO checkpoint as --omg-from")
    torch.manual_seed(seed)
    babo_config = replace(ModelConfig(arch=arch), num_classes=source.config.num_classes, input_size=tuple(input_hw),
                          omg=True, omg_size=tuple(omg_hw), argmax=source.config.argmax, beta=source.config.beta,
                          postprocess=source.config.postprocess)
    babo = build_model(babo_config)
    load_weights(omg_from, "OMG", babo.omg, source.omg_state)
    with torch.no_grad():
        for name, parameter in babo.detector.head.named_parameters():
            if name.endswith("bias") and name.startswith("cls."):
                per_anchor = parameter.view(-1, source.config.num_classes + 1)
                per_anchor[:, -1] = BACKGROUND_LOGIT
    vanilla_config = replace(babo_config, omg=False, omg_size=None)
    vanilla = build_model(vanilla_config)
    vanilla.detector.load_state_dict(babo.detector.state_dict())
    note = {"purpose": "timing only: random detector weights, the OMG of " + str(omg_from), "seed": seed}
    out.mkdir(parents=True, exist_ok=True)
    save_checkpoint(paths[0], babo, babo_config, source.class_names, note)
    save_checkpoint(paths[1], vanilla, vanilla_config, source.class_names, note)
    return paths


@run_cli(also=(FileExistsError,))
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    for path in timing_checkpoints(args.arch, args.input_size, args.omg_size, args.omg_from, args.seed, args.out):
        print(f"written {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
