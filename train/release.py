"""Ship a trained checkpoint: `python train/release.py runs/babo/last.pt models/zoo/babo.pt`.

Keeps weights, config, class names and training metadata (history, command, time), drops the
optimizer state that only --resume needs.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from babo_edge.errors import run_cli


@run_cli(also=(OSError,))
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("src")
    parser.add_argument("dst")
    parser.add_argument("--half", action="store_true", help="store the weights as float16 (half the size)")
    parser.add_argument("--force", action="store_true", help="replace DST if it exists")
    args = parser.parse_args(argv)
    from babo_edge.models.checkpoint import release_checkpoint  # torch: after --help

    out = release_checkpoint(args.src, args.dst, note={"released_from": Path(args.src).name},
                             half=args.half, overwrite=args.force)
    print(f"{out} ({out.stat().st_size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
