"""Pruning of the detector (the compressed-object-detection paper): magnitude and channels.

- `magnitude`: global unstructured magnitude pruning. The `ratio` of the conv weights in
  scope with the smallest |w| (one threshold over all of them) are set to exactly 0 in
  place; nothing is hooked into the model, so a checkpoint saves and exports as usual.
  OpenVINO gains no time from such zeros; the INT8 .bin only compresses better.
- `channels`: L2-norm unit pruning that physically removes channels (MobileNetV2-SSDLite
  only), ranked by the L2 norm of each channel's column in the 1x1 conv that consumes it:
  * the hidden channels of each inverted residual: expansion out, depthwise and projection
    in are one group, so the residual adds (block outputs) keep their width. The t=1 block
    of stage1 has no expansion: its hidden channels are the stem's output, so the stem
    conv is its expansion. The SSDLite tap on stages[5][0]'s expansion output feeds head
    level 0, whose depthwise + 1x1 branches shrink with it;
  * the output of each stage (the residual stream of its blocks): every block's projection
    out, and the expansions that read it (the stage's later blocks and the next stage's first
    block, or the final 1x1 conv), which rank it by their columns together; the shortcuts
    stay where they are;
  * the outputs of the final 1x1 conv (`head_conv`, 1280 wide): the second tap, read by head
    level 1 (depthwise + 1x1 branches, shrunk with it) and the first extra level's 1x1;
  * the middle ('half') channels of each SSDLite extra level (1x1 -> dw -> 1x1).
  Not prunable: the extra levels' outputs (head inputs shared with the next level, at most
  4x4) and the head branches' own width (a depthwise conv on the feature, then the 1x1
  predictor whose outputs are anchors x classes).
  VGG16-SSD512 and RetinaNet builders have no per-layer widths, so channels refuses them.
The mask path and the OMG are never pruned: the mask must stay the trained binary mask.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import nn

from babo_edge.models.builders import ModelConfig, build_model
from babo_edge.models.detector import BABODetector
from babo_edge.models.layers import make_divisible

SCOPES = ("backbone", "heads", "all")  # train.options.PRUNE_SCOPES (a test checks)


def scoped_convs(model: BABODetector, scope: str) -> list[nn.Conv2d]:
    """Detector convs of a scope: backbone, heads (neck + head) or all; never the OMG."""
    det = model.detector
    roots = {"backbone": [det.backbone], "heads": [det.neck, det.head],
             "all": [det.backbone, det.neck, det.head]}
    if scope not in roots:
        raise ValueError(f"unknown pruning scope {scope!r}; known: {SCOPES}")
    roots = roots[scope]
    return [m for root in roots for m in root.modules() if isinstance(m, nn.Conv2d)]


@torch.no_grad()
def magnitude_masks(model: BABODetector, ratio: float, scope: str = "all") -> dict[nn.Conv2d, torch.Tensor]:
    """Keep-masks (bool, weight-shaped) zeroing exactly round(ratio * n) of the n weights in
    scope, those of smallest |w| (one global ranking; ties broken by position)."""
    convs = scoped_convs(model, scope)
    magnitudes = torch.cat([c.weight.detach().abs().flatten() for c in convs])
    pruned = round(ratio * magnitudes.numel())
    keep = torch.ones_like(magnitudes, dtype=torch.bool)
    if pruned:
        keep[torch.argsort(magnitudes, stable=True)[:pruned]] = False
    masks, start = {}, 0
    for conv in convs:
        n = conv.weight.numel()
        masks[conv] = keep[start:start + n].view_as(conv.weight)
        start += n
    return masks


@torch.no_grad()
def apply_masks(masks: dict[nn.Conv2d, torch.Tensor]) -> None:
    """Zero the pruned weights (after every optimizer step while fine-tuning)."""
    for conv, keep in masks.items():
        conv.weight.mul_(keep)


def prune_magnitude(model: BABODetector, ratio: float, scope: str = "all") -> dict[nn.Conv2d, torch.Tensor]:
    """One-shot global magnitude pruning in place (the paper's); returns the masks."""
    masks = magnitude_masks(model, ratio, scope)
    apply_masks(masks)
    return masks


def sparsity_at(step: int, ramp_steps: int, target: float) -> float:
    """Cubic sparsity ramp of Zhu & Gupta (2017): 0 at step 0, `target` from `ramp_steps` on;
    prunes fast while the network still has redundancy, slowly near the target."""
    if ramp_steps <= 0 or step >= ramp_steps:
        return target
    return target * (1 - (1 - step / ramp_steps) ** 3)


def weight_sparsity(model: BABODetector, scope: str = "all") -> float:
    """Fraction of exactly-zero weights among the conv weights of a scope."""
    convs = scoped_convs(model, scope)
    total = sum(c.weight.numel() for c in convs)
    return sum(int((c.weight == 0).sum()) for c in convs) / total


# --- channel pruning (MobileNetV2-SSDLite) ---------------------------------------------


@dataclass(frozen=True)
class _Group:
    """One prunable channel group: convs whose output channels (dim 0) are the group,
    BatchNorms on it, and convs whose input channels (dim 1) are the group."""

    out_convs: tuple[str, ...]
    norms: tuple[str, ...]
    in_convs: tuple[str, ...]
    ranking: tuple[str, ...]  # the consuming 1x1 convs whose columns rank the channels


def _groups(model: BABODetector, scope: str) -> tuple[list[tuple[str, int, _Group]], list[tuple[str, int, _Group]]]:
    """(part, index, group) of the backbone blocks and extra levels in scope, by state keys."""
    det = model.detector
    backbone, extras = [], []
    if scope in ("backbone", "all"):
        index = 0
        for s, stage in enumerate(det.backbone.stages):
            for b, block in enumerate(stage):
                p = f"detector.backbone.stages.{s}.{b}."
                expand = p + "expand" if not isinstance(block.expand, nn.Identity) else (
                    "detector.backbone.stem" if index == 0 else None)
                if expand is not None:
                    out_convs, norms = [expand + ".0", p + "depthwise.0"], [expand + ".1", p + "depthwise.1"]
                    in_convs = [p + "project.0"]
                    if s == 5 and b == 0:  # the SSDLite tap: head level 0 reads this tensor
                        for branch in ("cls", "box"):
                            h = f"detector.head.{branch}.0."
                            out_convs.append(h + "0.0")
                            norms.append(h + "0.1")
                            in_convs.append(h + "1")
                    backbone.append(("backbone", index, _Group(tuple(out_convs), tuple(norms),
                                                               tuple(in_convs), (p + "project.0",))))
                index += 1
        stages = det.backbone.stages
        for s, stage in enumerate(stages):
            blocks = [f"detector.backbone.stages.{s}.{b}." for b in range(len(stage))]
            readers = [p + "expand.0" for p in blocks[1:]] + [
                f"detector.backbone.stages.{s + 1}.0.expand.0" if s + 1 < len(stages) else "detector.backbone.head_conv.0"]
            backbone.append(("stages", s, _Group(tuple(p + "project.0" for p in blocks),
                                                 tuple(p + "project.1" for p in blocks), tuple(readers), tuple(readers))))
        branches = [f"detector.head.{branch}.1." for branch in ("cls", "box")]
        consumers = ("detector.neck.levels.0.0.0", *(h + "1" for h in branches))
        backbone.append(("head_conv", 0, _Group(("detector.backbone.head_conv.0", *(h + "0.0" for h in branches)),
                                                ("detector.backbone.head_conv.1", *(h + "0.1" for h in branches)),
                                                consumers, consumers)))
    if scope in ("heads", "all"):
        for i in range(len(det.neck.levels)):
            p = f"detector.neck.levels.{i}."
            extras.append(("extras", i, _Group((p + "0.0", p + "1.0"), (p + "0.1", p + "1.1"),
                                               (p + "2.0",), (p + "2.0",))))
    return backbone, extras


def published_widths(model: BABODetector) -> dict[str, list[int]]:
    det = model.detector
    return {"backbone": [block.hidden_channels for stage in det.backbone.stages for block in stage],
            "stages": [stage[-1].out_channels for stage in det.backbone.stages],
            "head_conv": [det.backbone.last_channels],
            "extras": [level[0][0].out_channels for level in det.neck.levels]}


def kept_channels(channels: int, ratio: float) -> int:
    """Channels left after pruning `ratio` of them, rounded to a multiple of 8 as the builder
    rounds every MobileNetV2 width: int8 kernels block channels by 8-64, so an odd width costs
    the time of the next block up."""
    return min(channels, make_divisible(channels * (1 - ratio)))


@torch.no_grad()
def prune_channels(model: BABODetector, config: ModelConfig, ratio: float,
                   scope: str = "all") -> tuple[BABODetector, ModelConfig]:
    """A new, narrower model: in every group in scope, the `ratio` of channels with the
    smallest L2 norm are removed (see the module docstring for the groups). The returned
    config carries the widths, so `build_model(config)` rebuilds it."""
    if config.arch != "mnv2-ssdlite":
        raise ValueError(f"channel pruning supports mnv2-ssdlite only (the {config.arch} builder "
                         "has no per-layer widths); use magnitude pruning")
    state = model.state_dict()
    widths = published_widths(model) if config.pruned_widths is None else {
        k: list(v) for k, v in {**published_widths(model), **config.pruned_widths}.items()}
    groups = [group for part in _groups(model, scope) for group in part]
    keeps = []  # ranked on the unpruned weights first: groups share convs (along other dims)
    for _, _, group in groups:
        columns = torch.cat([state[name + ".weight"].transpose(0, 1).flatten(1) for name in group.ranking], dim=1)
        order = torch.argsort(columns.norm(dim=1), descending=True, stable=True)
        keeps.append(order[:kept_channels(len(order), ratio)].sort().values)
    for (part, index, group), keep in zip(groups, keeps):
        for name in group.out_convs:
            state[name + ".weight"] = state[name + ".weight"][keep]
        for name in group.norms:
            for key in ("weight", "bias", "running_mean", "running_var"):
                state[f"{name}.{key}"] = state[f"{name}.{key}"][keep]
        for name in group.in_convs:
            state[name + ".weight"] = state[name + ".weight"][:, keep]
        widths[part][index] = len(keep)
    pruned_config = replace(config, pruned_widths=widths)
    pruned = build_model(pruned_config)
    pruned.load_state_dict(state)
    return pruned.train(model.training), pruned_config
