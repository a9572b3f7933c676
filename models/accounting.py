"""MAC / MAC* accounting: the paper's Eq. 3-4 and the report schema, in plain Python.

This module imports neither torch nor nncf on purpose: the device runtime runs on edge boxes
without torch and must produce its report with exactly this code, so that a PyTorch-side
report and a device-side report can be diffed line by line.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

REPORT_SCHEMA = "babo-edge/mac-report"
REPORT_VERSION = 1
NETWORKS = ("omg", "od")


@dataclass(frozen=True)
class ConvLayer:
    """Shape facts of one convolution, enough for Eq. 3 (no weights, no framework objects)."""

    name: str
    network: str  # "omg" (objectness mask generator) or "od" (object detector)
    block: str  # group used for the per-block view (paper Fig. 5)
    in_channels: int
    out_channels: int
    input_hw: tuple[int, int]
    kernel: tuple[int, int]
    stride: tuple[int, int]
    groups: int = 1
    binary: bool = False  # sign(x) * sign(W) (models/binary.py): binary ops, not MACs

    @property
    def input_numel(self) -> int:
        """Number of input activations per image (w_i * h_i * c_i)."""
        return self.input_hw[0] * self.input_hw[1] * self.in_channels


def conv_macs(layer: ConvLayer, zeros: float = 0.0) -> float:
    """MAC (Eq. 3) or, given the zeros in the input, MAC* (Eq. 4) of one convolution.

    Generalised to grouped and depthwise convolutions: each output channel reads only
    c_in / groups input channels, so every input activation feeds c_out / groups outputs.
    Padding is omitted as in the paper, so the count is input-based: (inputs - zeros) *
    (c_out / groups) * kh * kw / (sh * sw).
    """
    if layer.in_channels % layer.groups or layer.out_channels % layer.groups:
        raise ValueError(f"{layer.name}: channels {layer.in_channels}->{layer.out_channels} "
                         f"not divisible by groups={layer.groups}")
    if not 0 <= zeros <= layer.input_numel:
        raise ValueError(f"{layer.name}: {zeros} zeros outside [0, {layer.input_numel}]")
    kh, kw = layer.kernel
    sh, sw = layer.stride
    nonzero = layer.input_numel - zeros
    return nonzero * (layer.out_channels // layer.groups) * kh * kw / (sh * sw)


BINARY_OPS_PER_MAC = 64  # BiDet / Bi-Real / XNOR-Net count 64 binary ops (one popcount word) as one MAC


def mac_equivalent(mac: float, binary_ops: float) -> float:
    """The paper's count: real MACs plus binary ops at 1/64 of a MAC each."""
    return mac + binary_ops / BINARY_OPS_PER_MAC


@dataclass
class LayerCount:
    """One convolution with the (average) number of zeros found in its input and, when
    measured, the MAC* that also skips zero weights (`weight_mac_star`): the exact number of
    (non-zero input, non-zero weight) products, borders included. It is not Eq. 4 times a
    weight density: with dense weights it sits slightly below MAC* (padded borders)."""

    layer: ConvLayer
    zeros: float = 0.0
    weight_mac_star: float | None = None

    def as_row(self) -> dict:
        row = asdict(self.layer)
        row["input_shape"] = [self.layer.in_channels, *self.layer.input_hw]
        del row["input_hw"]
        real = not self.layer.binary  # a binary layer's MACs are binary ops; zeros do not skip them
        row.update(
            zeros=self.zeros,
            zero_ratio=self.zeros / self.layer.input_numel,
            mac=conv_macs(self.layer) if real else 0.0,
            mac_star=conv_macs(self.layer, self.zeros) if real else 0.0,
            mac_star_w=self.weight_mac_star if real or self.weight_mac_star is None else 0.0,
            binary_ops=0.0 if real else conv_macs(self.layer),
        )
        return row


def _summary(rows: list[dict]) -> dict:
    numel = sum(r["input_shape"][0] * r["input_shape"][1] * r["input_shape"][2] for r in rows)
    zeros = sum(r["zeros"] for r in rows)
    weight_counts = [r.get("mac_star_w") for r in rows]
    return {
        "layers": len(rows),
        "activations": numel,
        "zeros": zeros,
        "zero_ratio": zeros / numel if numel else 0.0,
        "mac": sum(r["mac"] for r in rows),
        "mac_star": sum(r["mac_star"] for r in rows),
        "mac_star_w": None if None in weight_counts else sum(weight_counts),  # None: not measured
        "binary_ops": sum(r.get("binary_ops", 0.0) for r in rows),
    }


def build_report(counts: list[LayerCount], *, fg_ratio: float | None = None,
                 images: int = 1, meta: dict | None = None) -> dict:
    """The one report schema, emitted by models/report.py, train/evaluate.py and the runtime.

    Layout: per network ("omg", "od"): layers (in execution order), blocks (in first-seen
    order) and totals; then totals over both networks, the mask FG-ratio and free metadata.
    """
    networks = {}
    for net in NETWORKS:
        rows = [c.as_row() for c in counts if c.layer.network == net]
        if not rows:
            continue
        blocks: dict[str, list[dict]] = {}
        for row in rows:
            blocks.setdefault(row["block"], []).append(row)
        networks[net] = {
            "layers": rows,
            "blocks": [{"name": name, **_summary(group)} for name, group in blocks.items()],
            "totals": _summary(rows),
        }
    all_rows = [row for net in networks.values() for row in net["layers"]]
    return {
        "schema": REPORT_SCHEMA,
        "version": REPORT_VERSION,
        "meta": dict(meta or {}),
        "images": images,
        "fg_ratio": fg_ratio,
        "networks": networks,
        "totals": _summary(all_rows),
    }


@dataclass
class ReportAccumulator:
    """Running averages over a stream of images (zeros per layer and FG-ratio).

    MAC* is linear in the zero count, so the MAC* of the averaged zeros equals the average
    MAC* over the images.
    """

    layers: list[ConvLayer] = field(default_factory=list)
    _zero_sums: list[float] = field(default_factory=list)
    _weight_sums: list[float | None] = field(default_factory=list)
    _fg_sum: float = 0.0
    _fg_images: int = 0
    images: int = 0

    def add(self, counts: list[LayerCount], fg_ratio: float | None = None) -> None:
        if not self.layers:
            self.layers = [c.layer for c in counts]
            self._zero_sums = [0.0] * len(counts)
            self._weight_sums = [0.0] * len(counts)
        if [c.layer for c in counts] != self.layers:
            raise ValueError("layer list changed between images: one report needs one model "
                             "at one input size")
        for i, c in enumerate(counts):
            self._zero_sums[i] += c.zeros
            known = self._weight_sums[i] is not None and c.weight_mac_star is not None
            self._weight_sums[i] = self._weight_sums[i] + c.weight_mac_star if known else None
        if fg_ratio is not None:
            self._fg_sum += fg_ratio
            self._fg_images += 1
        self.images += 1

    def report(self, meta: dict | None = None) -> dict:
        if not self.images:
            raise ValueError("no image was added to the report")
        counts = [LayerCount(layer, z / self.images, None if w is None else w / self.images)
                  for layer, z, w in zip(self.layers, self._zero_sums, self._weight_sums)]
        fg = self._fg_sum / self._fg_images if self._fg_images else None
        return build_report(counts, fg_ratio=fg, images=self.images, meta=meta)


def figures(totals: dict) -> dict[str, float]:
    """gmac, gmac_star and zero_ratio of a report's `totals` section (or a network's)."""
    return {"gmac": totals["mac"] / 1e9, "gmac_star": totals["mac_star"] / 1e9, "zero_ratio": totals["zero_ratio"]}


def binary_figures(totals: dict) -> dict[str, float]:
    """Binary Gops and the BiDet paper's MAC-equivalent GMAC of a report's `totals` section."""
    binary_ops = totals.get("binary_ops", 0.0)
    return {"binary_gops": binary_ops / 1e9, "gmac_equivalent": mac_equivalent(totals["mac"], binary_ops) / 1e9}


def format_report(report: dict, *, per_layer: bool = True) -> str:
    """A readable table: per layer (optional), per block and totals, in GMAC / GMAC* / zeros%."""
    lines = []
    header = f"{'layer':<48} {'input CxHxW':>15} {'k':>3} {'s':>2} {'g':>5} {'GMAC':>8} {'GMAC*':>8} {'zeros%':>7}"
    for net, data in report["networks"].items():
        if per_layer:
            lines += [f"[{net}] layers", header, "-" * len(header)]
            for r in data["layers"]:
                shape = "x".join(str(v) for v in r["input_shape"])
                lines.append(
                    f"{r['name'][:48]:<48} {shape:>15} {r['kernel'][0]:>3} {r['stride'][0]:>2} "
                    f"{r['groups']:>5} {r['mac'] / 1e9:>8.4f} {r['mac_star'] / 1e9:>8.4f} "
                    f"{100 * r['zero_ratio']:>7.2f}")
        lines += [f"[{net}] blocks", f"{'block':<48} {'layers':>6} {'GMAC':>8} {'GMAC*':>8} {'zeros%':>7}"]
        for b in data["blocks"] + [{"name": "total", **data["totals"]}]:
            lines.append(f"{b['name'][:48]:<48} {b['layers']:>6} {b['mac'] / 1e9:>8.3f} "
                         f"{b['mac_star'] / 1e9:>8.3f} {100 * b['zero_ratio']:>7.2f}")
        lines.append("")
    t = report["totals"]
    fg = report.get("fg_ratio")
    fg_text = "n/a (no mask)" if fg is None else f"{100 * fg:.2f}%"
    weights = "" if t.get("mac_star_w") is None else f"GMAC* with weight zeros {t['mac_star_w'] / 1e9:.3f}  "
    lines.append(f"total (OMG + OD): GMAC {t['mac'] / 1e9:.3f}  GMAC* {t['mac_star'] / 1e9:.3f}  {weights}"
                 f"zeros {100 * t['zero_ratio']:.2f}%  FG-ratio {fg_text}  images {report['images']}")
    if t.get("binary_ops"):
        f = binary_figures(t)
        lines.append(f"binary layers: {f['binary_gops']:.3f} G binary ops (not in GMAC); GMAC with binary ops "
                     f"at 1/{BINARY_OPS_PER_MAC} (the BiDet paper's count): {f['gmac_equivalent']:.3f}")
    return "\n".join(lines)
