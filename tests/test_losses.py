"""Loss pieces on tiny hand-made tensors: dilation, OHNEM, re-weighting, SSD matching and mining."""
import math

import pytest
import torch
import torch.nn.functional as F

from models.anchors import BoxCoder
from train.losses import OMGLossConfig, assign_anchors, dilate, multibox_loss, omg_loss


def test_dilation_grows_a_pixel_into_a_square():
    mask = torch.zeros(1, 1, 7, 7)
    mask[0, 0, 3, 3] = 1
    assert torch.equal(dilate(mask, 1), mask)
    d3 = dilate(mask, 3)
    assert d3.sum() == 9 and torch.all(d3[0, 0, 2:5, 2:5] == 1)
    d4 = dilate(mask, 4)  # even kernels keep the shape too
    assert d4.shape == mask.shape and d4.sum() == 16


def two_class_logits(p_fg: torch.Tensor) -> torch.Tensor:
    """Logits whose softmax gives foreground probability p_fg."""
    return torch.stack([torch.zeros_like(p_fg), torch.log(p_fg / (1 - p_fg))], dim=1)


def test_ohnem_keeps_positives_and_the_hardest_negatives():
    # 1 positive pixel, 5 negatives with increasing foreground probability (= increasing loss)
    p = torch.tensor([[[0.9, 0.1, 0.2, 0.3, 0.4, 0.5]]])
    gt = torch.tensor([[[[1.0, 0, 0, 0, 0, 0]]]])
    ce = -torch.log(torch.tensor([0.9, 0.9, 0.8, 0.7, 0.6, 0.5]))
    cfg = OMGLossConfig(negatives_per_positive=2.0, min_negatives=0)
    expected = (ce[0] + ce[4] + ce[5]) / 3  # positive + the 2 hardest negatives
    assert omg_loss(two_class_logits(p), gt, cfg).item() == pytest.approx(expected.item(), rel=1e-5)
    all_pixels = omg_loss(two_class_logits(p), gt, OMGLossConfig())
    assert all_pixels.item() == pytest.approx(ce.mean().item(), rel=1e-5)


def test_loss_reweighting_weights_positives():
    p = torch.tensor([[[0.6, 0.3]]])
    gt = torch.tensor([[[[1.0, 0]]]])
    ce = -torch.log(torch.tensor([0.6, 0.7]))
    got = omg_loss(two_class_logits(p), gt, OMGLossConfig(positive_weight=3.0))
    assert got.item() == pytest.approx(((3 * ce[0] + ce[1]) / 4).item(), rel=1e-5)


def test_dilation_changes_the_target():
    p = torch.full((1, 1, 5), 0.8)  # a 1x5 image predicted foreground everywhere
    gt = torch.tensor([[[[0.0, 0, 1, 0, 0]]]])
    pos, neg = -math.log(0.8), -math.log(0.2)
    plain = omg_loss(two_class_logits(p), gt, OMGLossConfig())
    dilated = omg_loss(two_class_logits(p), gt, OMGLossConfig(dilation=3))  # 3 positives now
    assert plain.item() == pytest.approx((pos + 4 * neg) / 5, rel=1e-5)
    assert dilated.item() == pytest.approx((3 * pos + 2 * neg) / 5, rel=1e-5)


def test_ssd_matching_threshold_and_forced_best_anchor():
    anchors = torch.tensor([[0.0, 0, 10, 10], [0, 0, 9, 10], [20, 20, 30, 30], [50, 50, 60, 60]])
    gt = torch.tensor([[0.0, 0, 10, 10], [48, 48, 70, 70]])
    assigned = assign_anchors(anchors, gt)
    # anchors 0 and 1 overlap GT 0 with IoU >= 0.5; anchor 3 has IoU 100/484 < 0.5 with GT 1
    # but is its best anchor, so it is forced positive; anchor 2 is background
    assert assigned.tolist() == [0, 0, -1, 1]
    assert assign_anchors(anchors, torch.zeros(0, 4)).tolist() == [-1] * 4


def test_multibox_hard_negative_mining_ratio():
    anchors = torch.tensor([[0.0, 0, 10, 10]] + [[20.0 * i, 50, 20 * i + 10, 60] for i in range(10)])
    logits = torch.zeros(1, 11, 3)  # 2 classes + background (last)
    logits[0, 1:, 0] = torch.arange(10, dtype=torch.float32)  # negatives get harder with index
    gt_boxes, gt_labels = [torch.tensor([[0.0, 0, 10, 10]])], [torch.tensor([1])]
    loss = multibox_loss(logits, torch.zeros(1, 11, 4), anchors, gt_boxes, gt_labels, BoxCoder())
    ce = F.cross_entropy(logits[0], torch.tensor([1] + [2] * 10), reduction="none")
    expected = ce[0] + ce[-3:].sum()  # 1 positive + the 3 hardest negatives
    assert loss.positives == 1
    assert loss.cls.item() == pytest.approx(expected.item(), rel=1e-5)
    assert loss.box.item() == pytest.approx(0.0, abs=1e-6)  # anchor == GT: zero delta
