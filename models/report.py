"""MAC / MAC* report of a BABO model: `python models/report.py --arch mnv2-ssdlite ...`.

Prints a per-layer table, per-block and total GMAC / GMAC* / zeros%, and writes the report
JSON (the schema the device runtime emits too). `--paper-table` prints the GMAC of every
configuration of the BABO paper's Tables 4-5 next to the paper's figure.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


import numpy as np

from babo_edge.errors import run_cli
from babo_edge.models.accounting import format_report
from babo_edge.models.cli import parse_size, write_json

# models.builders.DETECTORS (a test checks)
ARCHITECTURES = ("mnv2-ssdlite", "vgg16-ssd300", "vgg16-bn-ssd300", "vgg16-ssd512", "retinanet-r101")

# (label, config overrides, paper GMAC or None, paper source)
PAPER_GMAC = [
    ("MobileNetV2-SSDLite w1.0 @512", dict(width=1.0, input_size=(512, 512), omg=False), 2.17, "Table 4"),
    ("MobileNetV2-SSDLite w0.75 @512", dict(width=0.75, input_size=(512, 512), omg=False), 1.61, "Table 4"),
    ("MobileNetV2-SSDLite w0.5 @512", dict(width=0.5, input_size=(512, 512), omg=False), 0.95, "Table 4"),
    ("MobileNetV2-SSDLite w1.0 @416", dict(width=1.0, input_size=(416, 416), omg=False), 1.44, "Table 4"),
    ("MobileNetV2-SSDLite w1.0 @352", dict(width=1.0, input_size=(352, 352), omg=False), 1.03, "Table 4"),
    ("BABO (OD @512 + OMG @256)", dict(width=1.0, input_size=(512, 512), omg_size=(256, 256)), 2.37, "Table 4"),
    ("VGG16-SSD512 @512", dict(arch="vgg16-ssd512", input_size=(512, 512), omg=False), 86.70, "Table 5"),
    ("RetinaNet R101-FPN @1216x800", dict(arch="retinanet-r101", input_size=(800, 1216), omg=False), 135.02, "Table 5"),
]
FAST_SCNN_ROWS = [("Fast-SCNN OMG @256", (256, 256), 2.37 - 2.17, "Table 4 (2.37 - 2.17)"),
                  ("Fast-SCNN OMG @512", (512, 512), None, "Table 3 gives GMAC* only")]


def default_image() -> np.ndarray:
    """A real photograph bundled with scikit-image, so the default report sees natural statistics."""
    from skimage import data
    return data.astronaut()


def load_image(path: str | None) -> np.ndarray:
    if path is None:
        return default_image()
    from babo_edge.calibration.images import read_image
    return read_image(path)


def gmac_of(config) -> dict[str, float]:
    """Dense GMAC per network of a ModelConfig (zeros do not change MAC)."""
    import torch

    from babo_edge.models.builders import build_model
    from babo_edge.models.profiling import mac_report

    model = build_model(config).eval()
    report = mac_report(model, torch.zeros(1, 3, *config.input_size))
    return {net: data["totals"]["mac"] / 1e9 for net, data in report["networks"].items()}


def paper_table() -> list[dict]:
    """Our GMAC for each configuration the paper reports, with the relative difference."""
    from babo_edge.models.builders import ModelConfig

    rows = []
    for label, overrides, paper, source in PAPER_GMAC:
        gmac = sum(gmac_of(ModelConfig(**overrides)).values())
        rows.append(dict(model=label, gmac=gmac, paper=paper, source=source))
    for label, size, paper, source in FAST_SCNN_ROWS:
        config = ModelConfig(input_size=size, omg_size=size)
        rows.append(dict(model=label, gmac=gmac_of(config)["omg"], paper=paper, source=source))
    for row in rows:
        row["diff"] = None if row["paper"] is None else row["gmac"] / row["paper"] - 1
    return rows


def format_paper_table(rows: list[dict]) -> str:
    lines = ["| model | GMAC (ours) | GMAC (paper) | diff | paper source |", "|---|---:|---:|---:|---|"]
    for r in rows:
        paper = "-" if r["paper"] is None else f"{r['paper']:.2f}"
        diff = "-" if r["diff"] is None else f"{100 * r['diff']:+.1f}%"
        lines.append(f"| {r['model']} | {r['gmac']:.3f} | {paper} | {diff} | {r['source']} |")
    return "\n".join(lines)


@run_cli(also=(ValueError, OSError))
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", choices=ARCHITECTURES, default="mnv2-ssdlite")
    parser.add_argument("--width", type=float, default=1.0, help="MobileNetV2 width multiplier")
    parser.add_argument("--input-size", type=parse_size, default=(512, 512), help="N or HxW")
    parser.add_argument("--omg-size", type=parse_size, default=None,
                        help="OMG input size (default: half the detector size)")
    parser.add_argument("--no-omg", action="store_true", help="vanilla detector, no mask")
    parser.add_argument("--num-classes", type=int, default=80)
    parser.add_argument("--ckpt", help="checkpoint: its architecture, sizes and weights are used")
    parser.add_argument("--image", help="image to measure zeros on (default: a bundled photograph)")
    parser.add_argument("--json", type=Path, help="write the report JSON here")
    parser.add_argument("--blocks-only", action="store_true", help="omit the per-layer table")
    parser.add_argument("--paper-table", action="store_true",
                        help="print our GMAC for every configuration of the paper, next to its figure")
    args = parser.parse_args(argv)
    # torch only now: --help and argument errors stay fast.
    import torch

    from babo_edge.models.builders import ModelConfig, build_model
    from babo_edge.models.checkpoint import load_model
    from babo_edge.models.preprocess import to_model_input
    from babo_edge.models.profiling import mac_report

    if args.paper_table:
        rows = paper_table()
        print(format_paper_table(rows))
        if args.json:
            write_json(args.json, rows)
        return 0
    if args.ckpt:
        model, ckpt = load_model(args.ckpt)
        config = ckpt.config
    else:
        h, w = args.input_size
        config = ModelConfig(arch=args.arch, width=args.width, num_classes=args.num_classes,
                             input_size=args.input_size, omg=not args.no_omg,
                             omg_size=None if args.no_omg else (args.omg_size or (h // 2, w // 2)))
        model = build_model(config).eval()
        print("note: randomly initialised weights (no --ckpt): GMAC is exact, GMAC* and zeros% "
              "only show what ReLU does on untrained weights", file=sys.stderr)
    image = load_image(args.image)
    batch = torch.from_numpy(to_model_input(image, config.input_size))[None]
    meta = {"config": config.to_dict(), "image": args.image or "skimage.data.astronaut",
            "checkpoint": args.ckpt}
    report = mac_report(model, batch, meta=meta)
    print(format_report(report, per_layer=not args.blocks_only))
    if args.json:
        write_json(args.json, report)
        print(f"report written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
