"""Loss pieces on tiny hand-made tensors: dilation, OHNEM, re-weighting, SSD matching and mining."""
import math

import pytest
import torch
import torch.nn.functional as F

from babo_edge.models.anchors import BoxCoder
from babo_edge.train.losses import OMGLossConfig, assign_anchors, dilate, fg_ratio_penalty, multibox_loss, omg_loss


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


# --- mask-aware detection loss -----------------------------------------------------------------

def test_blacked_out_anchors_leave_the_loss_and_dead_positives_are_counted():
    # 6 anchors side by side, 2 classes + background; one GT on anchor 0 and one on anchor 4.
    anchors = torch.tensor([[10.0 * i, 0, 10.0 * i + 10, 10] for i in range(6)])
    gt_boxes = [torch.tensor([[0.0, 0, 10, 10], [40.0, 0, 50, 10]])]
    gt_labels = [torch.tensor([0, 1])]
    coder = BoxCoder((0.1, 0.1, 0.2, 0.2))
    logits = torch.tensor([[[2.0, 0, 0], [0, 0, 3], [1, 0, 0], [0, 2, 0], [0, 1, 0], [0, 0, 1]]])
    deltas = torch.full((1, 6, 4), 0.5)
    alive = torch.tensor([[True, False, True, False, False, True]])  # anchor 4's GT is blacked out
    loss = multibox_loss(logits, deltas, anchors, gt_boxes, gt_labels, coder, alive=alive)
    ce = -F.log_softmax(logits[0], dim=1)
    # Live positive: anchor 0 (class 0). Live negatives: anchors 2 and 5; 3 per positive asked,
    # only 2 are alive, so both count; anchors 1 and 3 (blacked out) are never mined.
    expected_cls = ce[0, 0] + ce[2, 2] + ce[5, 2]
    expected_box = F.smooth_l1_loss(deltas[0, 0], torch.zeros(4), beta=1.0, reduction="sum")
    assert loss.positives == 1 and loss.dead_positives == 1
    assert loss.cls.item() == pytest.approx(expected_cls.item(), rel=1e-6)
    assert loss.box.item() == pytest.approx(expected_box.item(), rel=1e-6)
    stock = multibox_loss(logits, deltas, anchors, gt_boxes, gt_labels, coder)
    assert stock.positives == 2 and stock.dead_positives == 0
    # without the mask anchor 1 (logit 3 on background: easy) loses to anchor 3 (hard) and the
    # second positive enters: a different loss, so the mask is what changed it
    assert stock.cls.item() != pytest.approx(loss.cls.item())


def test_e2e_trains_dead_positives_so_a_closed_mask_costs_loss():
    """Same scene as above, the mask learned: the blacked-out GT anchor 4 is a positive again
    (class and box), negatives are still mined on live anchors only (2 and 5)."""
    anchors = torch.tensor([[10.0 * i, 0, 10.0 * i + 10, 10] for i in range(6)])
    gt_boxes, gt_labels = [torch.tensor([[0.0, 0, 10, 10], [40.0, 0, 50, 10]])], [torch.tensor([0, 1])]
    coder = BoxCoder((0.1, 0.1, 0.2, 0.2))
    logits = torch.tensor([[[2.0, 0, 0], [0, 0, 3], [1, 0, 0], [0, 2, 0], [0, 1, 0], [0, 0, 1]]])
    deltas = torch.full((1, 6, 4), 0.5)
    alive = torch.tensor([[True, False, True, False, False, True]])
    loss = multibox_loss(logits, deltas, anchors, gt_boxes, gt_labels, coder, alive=alive, train_dead_positives=True)
    ce = -F.log_softmax(logits[0], dim=1)
    one_box = F.smooth_l1_loss(deltas[0, 0], torch.zeros(4), beta=1.0, reduction="sum")
    assert loss.positives == 2 and loss.dead_positives == 1
    assert loss.cls.item() == pytest.approx(((ce[0, 0] + ce[4, 1] + ce[2, 2] + ce[5, 2]) / 2).item(), rel=1e-6)
    assert loss.box.item() == pytest.approx(one_box.item(), rel=1e-6)  # (2 boxes) / 2 positives


def test_gradients_never_reach_blacked_out_anchors():
    anchors = torch.tensor([[10.0 * i, 0, 10.0 * i + 10, 10] for i in range(4)])
    logits = torch.randn(1, 4, 3, requires_grad=True)
    deltas = torch.randn(1, 4, 4, requires_grad=True)
    alive = torch.tensor([[True, True, False, False]])
    loss = multibox_loss(logits, deltas, anchors, [torch.tensor([[20.0, 0, 30, 10], [0.0, 0, 10, 10]])],
                         [torch.tensor([1, 0])], BoxCoder((0.1, 0.1, 0.2, 0.2)), alive=alive)
    (loss.cls + loss.box).backward()
    assert torch.all(logits.grad[0, 2:] == 0) and torch.all(deltas.grad[0, 2:] == 0)
    assert torch.any(logits.grad[0, :2] != 0)


def test_fg_ratio_penalty_only_pushes_an_open_mask():
    p = torch.tensor([[[0.9, 0.9], [0.9, 0.1]]])  # mean foreground probability 0.7
    logits = two_class_logits(p).requires_grad_(True)
    penalty = fg_ratio_penalty(logits, 0.5)
    assert penalty.item() == pytest.approx(0.2 ** 2, rel=1e-5)
    penalty.backward()
    assert torch.all(logits.grad[:, 1] > 0)  # descending lowers the foreground logits
    assert fg_ratio_penalty(two_class_logits(p), 0.8).item() == 0.0
