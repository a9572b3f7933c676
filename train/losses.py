"""Training losses: SSD multibox (hard-negative mining 3:1) and the OMG pixel loss (paper Table 1)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from babo_edge.models.anchors import BoxCoder
from babo_edge.models.postprocess import box_iou


def assign_anchors(anchors: torch.Tensor, gt_boxes: torch.Tensor, pos_iou: float = 0.5) -> torch.Tensor:
    """SSD matching (MMDetection's MaxIoUAssigner for SSD): an anchor takes the GT it overlaps
    most if IoU >= pos_iou, and every GT also takes its single best anchor. Returns, per anchor,
    the matched GT index or -1 for background."""
    assigned = torch.full((anchors.shape[0],), -1, dtype=torch.long, device=anchors.device)
    if gt_boxes.numel() == 0:
        return assigned
    iou = box_iou(gt_boxes, anchors)  # (G, A)
    best_iou, best_gt = iou.max(dim=0)
    assigned[best_iou >= pos_iou] = best_gt[best_iou >= pos_iou]
    best_anchor = iou.argmax(dim=1)
    assigned[best_anchor] = torch.arange(gt_boxes.shape[0], device=anchors.device)
    return assigned


@dataclass
class DetectionLoss:
    cls: torch.Tensor
    box: torch.Tensor
    positives: int
    dead_positives: int = 0  # matched anchors on blacked-out cells: objects the mask missed


def multibox_loss(cls_logits: torch.Tensor, box_deltas: torch.Tensor, anchors: torch.Tensor,
                  gt_boxes: list[torch.Tensor], gt_labels: list[torch.Tensor], coder: BoxCoder,
                  neg_pos_ratio: int = 3, alive: torch.Tensor | None = None,
                  train_dead_positives: bool = False) -> DetectionLoss:
    """SSD loss: softmax CE over positives plus the `neg_pos_ratio` x hardest negatives per image,
    smooth-L1 (beta 1) on encoded boxes of positives; both divided by the number of positives in
    the batch. Background is the last class column.

    `alive` (N, A) bool, the anchors on foreground cells of the mask (`BABOOutput.alive`): the
    others output only their head's bias and are background by construction, so they are left
    out of classification, hard-negative mining and box regression. Otherwise they would be
    most of the hard negatives, and their gradient would move the biases every anchor shares.
    Positives on blacked-out cells (objects the mask missed) are counted in `dead_positives` and
    left out too, unless `train_dead_positives`: when the mask is learned (e2e) their loss is the
    only signal, through the straight-through mask, that reopens the mask on a missed object;
    without it, closing the mask only ever lowers the detection loss."""
    n, a, c1 = cls_logits.shape
    background = c1 - 1
    targets = torch.full((n, a), background, dtype=torch.long, device=cls_logits.device)
    box_targets = torch.zeros_like(box_deltas)
    for i in range(n):
        matched = assign_anchors(anchors, gt_boxes[i])
        pos = matched >= 0
        targets[i, pos] = gt_labels[i][matched[pos]]
        box_targets[i, pos] = coder.encode(gt_boxes[i][matched[pos]], anchors[pos])
    ce = F.cross_entropy(cls_logits.reshape(-1, c1), targets.reshape(-1), reduction="none").view(n, a)
    positive = targets != background
    dead_positives = 0
    if alive is not None:
        dead_positives = int((positive & ~alive).sum())
        if not train_dead_positives:
            positive = positive & alive
    num_pos = int(positive.sum())
    hard_negatives = torch.zeros_like(positive)
    neg_ce = ce.detach().masked_fill(positive, -1.0)
    candidates = torch.full((n,), a, dtype=torch.long)
    if alive is not None:
        neg_ce = neg_ce.masked_fill(~alive, -1.0)
        candidates = (alive | positive).sum(dim=1).cpu()
    for i in range(n):
        k = min(neg_pos_ratio * int(positive[i].sum()), int(candidates[i]) - int(positive[i].sum()))
        if k > 0:
            hard_negatives[i, neg_ce[i].topk(k).indices] = True
    denom = max(num_pos, 1)
    cls_loss = (ce[positive].sum() + ce[hard_negatives].sum()) / denom
    box_loss = F.smooth_l1_loss(box_deltas[positive], box_targets[positive], beta=1.0, reduction="sum") / denom
    return DetectionLoss(cls_loss, box_loss, num_pos, dead_positives)


@dataclass(frozen=True)
class OMGLossConfig:
    """Paper Table 1: mask dilation kernel (MD), negatives per positive for online hard
    negative mining (OHNEM, None = all pixels) and the positive-class loss weight (LW)."""

    dilation: int = 0
    negatives_per_positive: float | None = None
    positive_weight: float = 1.0
    min_negatives: int = 256


def dilate(mask: torch.Tensor, kernel: int) -> torch.Tensor:
    """Binary dilation of (N, 1, H, W) masks with a kernel x kernel square."""
    if kernel <= 1:
        return mask
    pad_lo = (kernel - 1) // 2
    padded = F.pad(mask, (pad_lo, kernel - 1 - pad_lo, pad_lo, kernel - 1 - pad_lo))
    return F.max_pool2d(padded, kernel, stride=1)


def omg_loss(logits: torch.Tensor, gt_mask: torch.Tensor, config: OMGLossConfig) -> torch.Tensor:
    """Pixel-wise CE of OMG logits (N, 2, H, W) against a (dilated) GT mask (N, 1, H, W),
    with OHNEM and loss re-weighting, normalised by the total weight of the selected pixels."""
    target = dilate(gt_mask, config.dilation)[:, 0].round().long()
    ce = F.cross_entropy(logits, target, reduction="none")  # (N, H, W)
    positive = target == 1
    selected = positive.clone()
    if config.negatives_per_positive is None:
        selected |= ~positive
    else:
        neg_ce = ce.detach().masked_fill(positive, -1.0).flatten(1)
        for i in range(ce.shape[0]):
            n_pos = int(positive[i].sum())
            n_neg = int((~positive[i]).sum())
            k = min(n_neg, max(int(config.negatives_per_positive * n_pos), config.min_negatives))
            if k:
                selected.view(ce.shape[0], -1)[i, neg_ce[i].topk(k).indices] = True
    weight = torch.where(positive, config.positive_weight, 1.0) * selected
    return (ce * weight).sum() / weight.sum().clamp_min(1.0)


def fg_ratio_penalty(logits: torch.Tensor, target: float) -> torch.Tensor:
    """Squared excess of the OMG's mean foreground probability over `target` (0 below it).

    Under joint training the detection loss gains from every pixel left on, so it pulls the
    mask open (FG-ratio 45% -> 83% in our first E2E run); this keeps the FG-ratio near the
    OMG's own, where MAC* is saved, without pushing a mask that is already tight."""
    foreground = torch.softmax(logits, dim=1)[:, 1:].sum(dim=1)
    return F.relu(foreground.mean() - target) ** 2


def information_bottleneck_loss(features: list[torch.Tensor]) -> torch.Tensor:
    """BiDet's IB term as its reference code computes it: the mean squared activation of the
    feature maps that feed the heads, averaged over the levels. Penalising their energy limits
    the information the binary backbone passes on (paper Eq. 7's I(X; F) bound)."""
    return torch.stack([f.pow(2).mean() for f in features]).mean()


def sparse_object_prior_loss(scores: torch.Tensor, image_index: torch.Tensor, num_images: int) -> torch.Tensor:
    """BiDet's sparse object prior: the entropy -sum p log p of the scores that survived NMS,
    normalised per image (p = s / sum of the image's s), averaged over the images. Low entropy =
    few confident detections: it suppresses the false positives of a binary detector.
    Vectorised over images with index_add (no per-image or per-class loop); images without
    detections add 0."""
    image_index = image_index.long()
    totals = scores.new_zeros(num_images).index_add(0, image_index, scores)
    p = scores / totals[image_index].clamp_min(1e-12)
    entropy = scores.new_zeros(num_images).index_add(0, image_index, -p * torch.log(p.clamp_min(1e-12)))
    return entropy.mean()
