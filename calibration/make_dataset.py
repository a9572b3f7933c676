"""Generate the built-in synthetic dataset: python calibration/make_dataset.py [--out DIR] [--seed 0] ..."""
import argparse
import time
from pathlib import Path

from babo_edge.errors import run_cli
from babo_edge.calibration import synthetic


@run_cli
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: the package's dataset cache)")
    parser.add_argument("--seed", type=int, default=synthetic.DEFAULT_SEED)
    for split in synthetic.SPLITS:
        unit = "video frames" if split == "video" else f"{split} images"
        parser.add_argument(f"--{split}", type=int, default=synthetic.DEFAULT_COUNTS[split], help=f"number of {unit}")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)

    started = time.perf_counter()
    out_dir = synthetic.generate(
        args.out or synthetic.default_dataset_dir(),
        seed=args.seed,
        counts={split: getattr(args, split) for split in synthetic.SPLITS},
        progress=not args.quiet,
        workers=args.workers,
    )
    elapsed = time.perf_counter() - started
    splits = synthetic.read_manifest(out_dir)["splits"]
    summary = "; ".join(
        f"{split} {stats['images']} img {stats['instances']} inst fg {stats['mean_fg_ratio']:.3f} "
        f"S/M/L {'/'.join(str(count) for count in stats['size_buckets'].values())}"
        for split, stats in splits.items()
    )
    print(f"{out_dir}: {summary}; {elapsed:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
