"""The mask reaches every conv input of the detector as exact zeros; sg-argmax and mask sources."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from babo_edge.models.blackout import (MaskPyramid, hard_argmax, random_mask, sg_argmax, soft_argmax,
                             spectral_residual_mask)
from babo_edge.models.builders import ModelConfig, build_model
from babo_edge.models.postprocess import detect


def conv_inputs(model, images, mask=None):
    """(name, conv input) for every detector conv, recorded after the black-out hooks."""
    seen = []
    handles = [m.register_forward_pre_hook(lambda mod, args, n=n: seen.append((n, args[0])))
               for n, m in model.detector.named_modules() if isinstance(m, nn.Conv2d)]
    with torch.no_grad():
        out = model(images, mask)
    for h in handles:
        h.remove()
    return seen, out


def pooled(mask, hw):
    """Independent reference: repeated 2x2 ceil-mode max-pooling until the shape matches."""
    while tuple(mask.shape[-2:]) != tuple(hw):
        assert mask.shape[-1] > 1 or mask.shape[-2] > 1, f"shape {hw} never reached"
        mask = F.max_pool2d(mask, 2, 2, ceil_mode=True)
    return mask


def blob_mask(n, h, w, seed=0):
    """Random rectangles (realistic, survives pooling partly) with one empty image row band."""
    g = torch.Generator().manual_seed(seed)
    mask = torch.zeros(n, 1, h, w)
    for i in range(n):
        for _ in range(3):
            y, x = int(torch.randint(0, h - 8, (1,), generator=g)), int(torch.randint(0, w - 8, (1,), generator=g))
            mask[i, 0, y:y + h // 5, x:x + w // 6] = 1
    return mask


@pytest.mark.parametrize("hw", [(320, 320), (333, 333), (300, 420), (256, 200)])
def test_every_detector_conv_input_is_zero_under_the_mask(hw):
    torch.manual_seed(0)
    model = build_model(ModelConfig(num_classes=3, input_size=hw, omg=False)).eval()
    images = torch.rand(2, 3, *hw) * 255
    mask = blob_mask(2, *hw)
    inputs, out = conv_inputs(model, images, mask)
    n_convs = sum(isinstance(m, nn.Conv2d) for m in model.detector.modules())
    assert len(inputs) == n_convs
    checked_background = 0
    for name, x in inputs:
        m = pooled(mask, x.shape[-2:]).expand_as(x)
        assert torch.all(x[m == 0] == 0), name
        checked_background += int((m == 0).sum())
    assert checked_background > 0
    assert out.mask is mask


def test_omg_mask_is_binary_and_blacks_out_the_detector():
    torch.manual_seed(1)
    model = build_model(ModelConfig(num_classes=3, input_size=(320, 320), omg_size=(160, 160))).eval()
    # bias the OMG classifier so that a visible part of the image is background
    final = model.omg.classifier[-1]
    with torch.no_grad():
        final.bias.copy_(torch.tensor([0.0, 0.0]))
    images = torch.rand(1, 3, 320, 320) * 255
    inputs, out = conv_inputs(model, images)
    mask = out.mask
    assert mask.shape == (1, 1, 320, 320)
    assert set(mask.unique().tolist()) <= {0.0, 1.0}
    assert 0 < mask.mean() < 1
    assert torch.equal(mask, hard_argmax(out.omg_logits))
    for name, x in inputs:
        m = pooled(mask, x.shape[-2:]).expand_as(x)
        assert torch.all(x[m == 0] == 0), name


def test_vanilla_model_is_not_masked():
    torch.manual_seed(0)
    model = build_model(ModelConfig(num_classes=3, input_size=(128, 128), omg=False)).eval()
    images = torch.rand(1, 3, 128, 128) * 255
    inputs, out = conv_inputs(model, images)
    assert out.mask is None
    first = inputs[0][1]
    assert torch.count_nonzero(first) == first.numel()  # the normalised image, untouched


def test_mask_pyramid_shapes_for_odd_sizes():
    pyramid = MaskPyramid(torch.ones(1, 1, 333, 200))
    assert list(pyramid.levels) == [(333, 200), (167, 100), (84, 50), (42, 25), (21, 13), (11, 7),
                                    (6, 4), (3, 2), (2, 1), (1, 1)]
    with pytest.raises(ValueError, match="no mask level"):
        pyramid.at((100, 100))
    with pytest.raises(ValueError, match=r"\(N, 1, H, W\)"):
        MaskPyramid(torch.ones(1, 2, 8, 8))


def test_sg_argmax_forward_is_argmax_and_gradient_is_soft_argmax():
    torch.manual_seed(0)
    logits = torch.randn(2, 2, 5, 7, requires_grad=True)
    mask = sg_argmax(logits, beta=5.0)
    assert torch.equal(mask, logits.argmax(1, keepdim=True).float())
    weights = torch.randn_like(mask)
    (mask * weights).sum().backward()
    reference = logits.detach().clone().requires_grad_(True)
    (soft_argmax(reference, 5.0) * weights).sum().backward()
    assert torch.allclose(logits.grad, reference.grad)
    assert logits.grad.abs().sum() > 0


def test_soft_argmax_formula():
    logits = torch.tensor([[[[0.0]], [[0.2]]]])  # 2 classes at one pixel
    p1 = torch.exp(torch.tensor(1.0)) / (1 + torch.exp(torch.tensor(1.0)))  # softmax(5 * x)[1]
    assert soft_argmax(logits, 5.0).item() == pytest.approx(p1.item())


@pytest.mark.parametrize("argmax", ["sg", "soft"])
def test_detector_loss_gradient_reaches_the_omg(argmax):
    torch.manual_seed(0)
    model = build_model(ModelConfig(num_classes=3, input_size=(128, 128), omg_size=(64, 64),
                                    argmax=argmax)).train()
    out = model(torch.rand(2, 3, 128, 128) * 255)
    if argmax == "sg":
        assert set(out.mask.unique().tolist()) <= {0.0, 1.0}  # binary even while training
    else:
        assert ((out.mask > 0) & (out.mask < 1)).any()  # soft while training
    (out.cls_logits.square().mean() + out.box_deltas.square().mean()).backward()
    grads = [p.grad for p in model.omg.parameters() if p.grad is not None]
    assert grads and sum(float(g.abs().sum()) for g in grads) > 0
    model.eval()
    with torch.no_grad():
        assert set(model(torch.rand(1, 3, 128, 128) * 255).mask.unique().tolist()) <= {0.0, 1.0}


def test_random_mask_hits_target_fg_ratio():
    g = torch.Generator().manual_seed(0)
    mask = random_mask((4, 1, 128, 128), 0.3, generator=g)
    assert set(mask.unique().tolist()) == {0.0, 1.0}
    assert mask.mean().item() == pytest.approx(0.3, abs=0.01)
    with pytest.raises(ValueError):
        random_mask((1, 1, 4, 4), 1.5)


def test_spectral_residual_finds_a_salient_object():
    g = torch.Generator().manual_seed(0)
    images = 100 + 10 * torch.randn((1, 3, 128, 128), generator=g)  # textured background
    images[:, :, 50:62, 60:72] = 250.0  # one bright square
    mask = spectral_residual_mask(images)  # the paper's threshold 0.08
    assert set(mask.unique().tolist()) <= {0.0, 1.0}
    assert mask[0, 0, 50:62, 60:72].mean() == 1
    assert mask[0, 0, 100:, :30].sum() == 0
    assert mask.mean() < 0.1


def test_anchor_alive_follows_the_heads_order_level_by_level():
    mask = torch.zeros(1, 1, 4, 4)
    mask[0, 0, 0, 3] = 1  # top-right pixel
    pyramid = MaskPyramid(mask)
    alive = pyramid.anchor_alive([(4, 4), (2, 2), (1, 1)], [2, 3, 1])
    expected = torch.zeros(16 * 2 + 4 * 3 + 1, dtype=torch.bool)
    expected[3 * 2:3 * 2 + 2] = True  # level 0: cell 3, its 2 anchors
    expected[32 + 1 * 3:32 + 1 * 3 + 3] = True  # level 1: cell (0, 1), its 3 anchors
    expected[-1] = True  # level 2: the one cell
    assert torch.equal(alive[0], expected)


def test_blacked_out_anchors_output_the_head_bias_and_are_never_detected():
    torch.manual_seed(0)
    model = build_model(ModelConfig(num_classes=3, input_size=(64, 64), omg=False, width=0.5)).eval()
    images = torch.rand(1, 3, 64, 64) * 255
    mask = torch.zeros(1, 1, 64, 64)
    mask[..., 8:24, 40:60] = 1
    with torch.no_grad():
        out = model(images, mask)
        dets, _ = model.detect(images, mask)
        stock = detect(out.cls_logits, out.box_deltas, out.anchors, (64, 64), model.detector.coder,
                       "softmax", model.postprocess)
    alive = out.alive[0]
    assert 0 < int(alive.sum()) < alive.numel()
    # level 0 (4x4 cells, 6 anchors each): a blacked-out cell gives exactly the last conv's bias
    first = model.detector.head.cls[0][-1].bias.view(6, 4)
    level0 = out.cls_logits[0, :16 * 6].view(16, 6, 4)
    dead_cells = ~alive[:16 * 6].view(16, 6)[:, 0]
    assert dead_cells.any() and torch.equal(level0[dead_cells], first.expand(int(dead_cells.sum()), 6, 4))
    # every detection comes from a live anchor: same score and box as one of them
    scores = torch.softmax(out.cls_logits[0], dim=-1)[:, :-1]
    boxes = model.detector.coder.decode(out.box_deltas[0], out.anchors).clamp(0, 64)
    assert dets.shape[0] > 0
    for _, label, score, *box in dets.tolist():
        same = ((scores[:, int(label)] - score).abs() < 1e-6) & ((boxes - torch.tensor(box)).abs().max(dim=1).values < 1e-3)
        assert same.any() and alive[same].all()
    assert stock.shape[0] > dets.shape[0]  # without the zeroing, bias-only anchors are detected
