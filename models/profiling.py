"""PyTorch side of the MAC/MAC* accounting: hooks that feed `models.accounting`.

Every convolution of the OMG and of the detector gets a forward pre-hook, registered after the
black-out hooks, so it sees exactly the (masked) tensor the convolution multiplies. A conv
module called several times per forward (RetinaNet's shared head) is one layer per call,
named `name#k` for the k-th repeat.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from babo_edge.models.accounting import ConvLayer, LayerCount, ReportAccumulator
from babo_edge.models.binary import BinaryConv2d
from babo_edge.models.detector import BABODetector, BABOOutput


def block_of(path: str, fallback_depth: int) -> str:
    """Block of a conv for the per-block view: its module path up to the first numeric
    component (a stage / level / block index), ignoring the conv's own last component;
    without one, the first `fallback_depth` components (e.g. `backbone.stem`)."""
    parts = path.split(".")[:-1] or path.split(".")
    for i, part in enumerate(parts):
        if part.isdigit():
            return ".".join(parts[: i + 1])
    return ".".join(parts[:fallback_depth])


def network_convs(model: BABODetector) -> list[tuple[str, str, str, nn.Conv2d]]:
    """(network, layer name, block, module) for every Conv2d, OMG first then detector."""
    out = []
    for network, root, depth in (("omg", model.omg, 1), ("od", model.detector, 2)):
        if root is None:
            continue
        for path, module in root.named_modules():
            if isinstance(module, nn.Conv2d):
                out.append((network, path, f"{network}.{block_of(path, depth)}", module))
    return out


def weight_mac_star(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """Per image, the (non-zero input, non-zero weight) products of `conv` on `x`: the conv of
    the two indicator tensors, summed. Each output is an integer below 2**24 (exact in float32);
    the sum is taken in float64."""
    pairs = torch.nn.functional.conv2d((x != 0).to(x.dtype), (conv.weight != 0).to(x.dtype), None, conv.stride,
                                       conv.padding, conv.dilation, conv.groups)
    return pairs.double().flatten(1).sum(dim=1)


@dataclass
class Profile:
    """Per-image conv-input zero counts of one forward pass, and the model's output."""

    counts: list[list[LayerCount]]  # one list per image, in execution order
    fg_ratios: list[float | None]  # per image; None without a mask
    output: BABOOutput


def profile(model: BABODetector, images: torch.Tensor, mask: torch.Tensor | None = None) -> Profile:
    """Runs the model once under no_grad and counts the zeros at every conv input."""
    calls: list[tuple[ConvLayer, torch.Tensor, torch.Tensor]] = []
    seen: dict[str, int] = {}

    def record(network: str, name: str, block: str):
        def hook(module: nn.Conv2d, args: tuple) -> None:
            x = args[0]
            repeat = seen.get(name, 0)
            seen[name] = repeat + 1
            layer = ConvLayer(
                name=name if repeat == 0 else f"{name}#{repeat}", network=network, block=block,
                in_channels=module.in_channels, out_channels=module.out_channels,
                input_hw=(int(x.shape[-2]), int(x.shape[-1])), kernel=tuple(module.kernel_size),
                stride=tuple(module.stride), groups=module.groups, binary=isinstance(module, BinaryConv2d))
            calls.append((layer, (x == 0).flatten(1).sum(dim=1), weight_mac_star(module, x)))
        return hook

    handles = [m.register_forward_pre_hook(record(net, name, block))
               for net, name, block, m in network_convs(model)]
    try:
        with torch.no_grad():
            output = model(images, mask)
    finally:
        for h in handles:
            h.remove()
    n = images.shape[0]
    counts = [[LayerCount(layer, float(zeros[i]), float(pairs[i])) for layer, zeros, pairs in calls]
              for i in range(n)]
    used = output.mask
    fg = [None] * n if used is None else [float(v) for v in used.flatten(1).mean(dim=1)]
    return Profile(counts, fg, output)


def mac_report(model: BABODetector, images: torch.Tensor, mask: torch.Tensor | None = None,
               meta: dict | None = None) -> dict:
    """The MAC/MAC* report (models.accounting schema) averaged over a batch of images."""
    result = profile(model, images, mask)
    acc = ReportAccumulator()
    for counts, fg in zip(result.counts, result.fg_ratios):
        acc.add(counts, fg)
    return acc.report(meta)
