"""VGG16-SSD300/512 and RetinaNet-R101-FPN (the papers' heavy detectors, MMDetection 2.x configs).

Full-size shape checks run on the meta device (shapes only, no arithmetic); real forward passes
use small inputs. VGG16-SSD512 cannot go below ~264 px: its last extra level is a 4x4 conv
that needs a 2x2 map, so its small size is 320x320; VGG16-SSD300 needs more than 256 px.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from babo_edge.models.builders import ModelConfig, build_detector, build_model
from babo_edge.models.retinanet import ResNet
from babo_edge.models.vgg_ssd import SSDVGG16

SMALL_SIZES = {"vgg16-ssd300": (264, 264), "vgg16-bn-ssd300": (264, 264), "vgg16-ssd512": (320, 320),
               "retinanet-r101": (160, 224)}

# arch: (input (H, W), feature-map sizes, anchors per location, class outputs per anchor)
FULL_SIZE_LAYOUT = {
    "vgg16-ssd300": ((300, 300), [(38, 38), (19, 19), (10, 10), (5, 5), (3, 3), (1, 1)],
                     [4, 6, 6, 6, 4, 4], 81),
    "vgg16-bn-ssd300": ((300, 300), [(38, 38), (19, 19), (10, 10), (5, 5), (3, 3), (1, 1)],
                        [4, 6, 6, 6, 4, 4], 81),
    "vgg16-ssd512": ((512, 512), [(64, 64), (32, 32), (16, 16), (8, 8), (4, 4), (2, 2), (1, 1)],
                     [4, 6, 6, 6, 6, 4, 4], 81),
    "retinanet-r101": ((800, 1216), [(100, 152), (50, 76), (25, 38), (13, 19), (7, 10)],
                       [9] * 5, 80),
}


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("arch", sorted(SMALL_SIZES))
def test_build_model_runs_and_matches_anchor_count(arch):
    size = SMALL_SIZES[arch]
    model = build_model(ModelConfig(arch=arch, input_size=size, omg=True)).eval()
    torch.manual_seed(0)
    with torch.no_grad():
        out = model(torch.rand(2, 3, *size) * 255)
    num_outputs = FULL_SIZE_LAYOUT[arch][3]
    anchors = out.anchors.shape[0]
    assert out.cls_logits.shape == (2, anchors, num_outputs)
    assert out.box_deltas.shape == (2, anchors, 4)
    assert out.anchors.shape == (anchors, 4)
    assert out.mask.shape == (2, 1, *size)
    assert torch.isfinite(out.cls_logits).all() and torch.isfinite(out.box_deltas).all()


@pytest.mark.parametrize("arch", sorted(FULL_SIZE_LAYOUT))
def test_full_size_feature_maps_and_anchors_per_location(arch):
    size, feature_hws, per_location, num_outputs = FULL_SIZE_LAYOUT[arch]
    detector = build_detector(ModelConfig(arch=arch, input_size=size)).to("meta").eval()
    image = torch.empty(1, 3, *size, device="meta")
    features = detector.neck(detector.backbone(image))
    assert [tuple(f.shape[-2:]) for f in features] == feature_hws
    cls, box, _, feature_hws = detector(image)
    level_counts = [h * w * a for (h, w), a in zip(feature_hws, per_location)]
    assert cls.shape == (1, sum(level_counts), num_outputs)
    assert box.shape == (1, sum(level_counts), 4)
    anchors = detector.anchors(feature_hws, size)
    assert anchors.shape == (sum(level_counts), 4)
    for a, level_anchors in zip(per_location, torch.split(anchors, level_counts)):
        # Location-major, anchor-minor: each run of `a` anchors shares one centre.
        centres = ((level_anchors[:, :2] + level_anchors[:, 2:]) / 2).view(-1, a, 2)
        assert torch.allclose(centres, centres[:, :1].expand_as(centres))


def _pooled_mask(mask: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """The mask max-pooled (2x2, ceil mode) down to `hw`, computed independently of the model."""
    while tuple(mask.shape[-2:]) != hw:
        if mask.shape[-2:] == (1, 1):
            raise AssertionError(f"no ceil-mode halving of the mask reaches {hw}")
        mask = F.max_pool2d(mask, 2, 2, ceil_mode=True)
    return mask


@pytest.mark.parametrize("arch", sorted(SMALL_SIZES))
def test_every_conv_input_is_zero_where_the_pooled_mask_is_zero(arch):
    size = SMALL_SIZES[arch]
    model = build_model(ModelConfig(arch=arch, input_size=size, omg=False)).eval()
    generator = torch.Generator().manual_seed(0)
    mask = (torch.rand(2, 1, *size, generator=generator) < 0.5).float()
    mask[0, :, : size[0] // 2] = 0  # top half of image 0 is background at every level >= 3 rows
    mask[1, :, -8:] = 0  # and a zero band at the bottom edge of image 1
    images = torch.rand(2, 3, *size, generator=generator) * 255

    convs = {name: m for name, m in model.detector.named_modules() if isinstance(m, nn.Conv2d)}
    tallest_input = dict.fromkeys(convs, 0)
    saw_background = dict.fromkeys(convs, False)
    leaks = []

    def check(name):
        def hook(module, args):
            x = args[0]
            background = (_pooled_mask(mask, tuple(x.shape[-2:])) == 0).expand_as(x)
            tallest_input[name] = max(tallest_input[name], x.shape[-2])
            saw_background[name] |= bool(background.any())
            if x[background].count_nonzero():
                leaks.append((name, tuple(x.shape)))
        return hook

    # Registered after construction, so they run after the black-out hooks.
    handles = [m.register_forward_pre_hook(check(name)) for name, m in convs.items()]
    try:
        with torch.no_grad():
            model(images, mask)
    finally:
        for handle in handles:
            handle.remove()
    assert not leaks
    assert all(tallest_input.values()), "some conv never ran"
    # Not vacuous: the zeroed top half leaves zero rows at every pyramid level of >= 3 rows.
    assert all(saw_background[name] for name, rows in tallest_input.items() if rows >= 3)


def test_resnet101_backbone_parameters_match_torchvision():
    """torchvision resnet101: 44,549,160 parameters, of which fc 2048*1000 + 1000."""
    assert _count(ResNet()) == 44_549_160 - (2048 * 1000 + 1000) == 42_500_160


def test_ssd_vgg16_parameters_match_torchvision_vgg16_convs_plus_fc6_fc7():
    """torchvision vgg16: 138,357,544 parameters, of which the classifier 123,642,856
    (25088->4096, 4096->4096, 4096->1000 with biases); SSD adds the dilated 3x3 fc6
    (512->1024) and the 1x1 fc7 (1024->1024), with biases."""
    vgg16_convs = 138_357_544 - 123_642_856
    fc6 = 512 * 1024 * 9 + 1024
    fc7 = 1024 * 1024 + 1024
    assert _count(SSDVGG16()) == vgg16_convs + fc6 + fc7 == 20_483_904


def test_vgg16_ssd300_has_the_ssd_papers_8732_priors_and_its_width_multiplier_scales_trunk_and_neck():
    detector = build_detector(ModelConfig(arch="vgg16-ssd300", input_size=(300, 300)))
    assert detector.anchors([(38, 38), (19, 19), (10, 10), (5, 5), (3, 3), (1, 1)], (300, 300)).shape == (8732, 4)
    narrow = build_detector(ModelConfig(arch="vgg16-ssd300", width=0.25, input_size=(300, 300)))
    widths = [m.out_channels for m in narrow.backbone.modules() if isinstance(m, nn.Conv2d)]
    assert widths == [16] * 2 + [32] * 2 + [64] * 3 + [128] * 6 + [256] * 2
    assert narrow.neck.out_channels == (128, 256, 128, 64, 64, 64)
    # Trunk parameters, by hand: 3x3 convs with bias, then fc6 (3x3, 128 -> 256) and fc7 (1x1).
    convs = [(3, 16), (16, 16), (16, 32), (32, 32), (32, 64), (64, 64), (64, 64),
             (64, 128), (128, 128), (128, 128), (128, 128), (128, 128), (128, 128)]
    expected = sum(i * o * 9 + o for i, o in convs) + (128 * 256 * 9 + 256) + (256 * 256 + 256)
    assert _count(narrow.backbone) == expected


def test_ssd_vgg16_bn_parameters_match_torchvision_vgg16_bn_convs_plus_fc6_fc7_with_bn():
    """torchvision vgg16_bn: 138,365,992 parameters, the same classifier; every conv gets a BN
    (weight and bias per channel), fc6 and fc7 too."""
    vgg16_bn_convs = 138_365_992 - 123_642_856
    fc6, fc7, their_bn = 512 * 1024 * 9 + 1024, 1024 * 1024 + 1024, 2 * 2 * 1024
    assert _count(SSDVGG16(batch_norm=True)) == vgg16_bn_convs + fc6 + fc7 + their_bn == 20_496_448
    neck = build_detector(ModelConfig(arch="vgg16-bn-ssd300", width=0.25)).neck
    bns = [m.num_features for m in neck.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns == [64, 128, 32, 64, 32, 64, 32, 64]  # a BN after both convs of each extra level


def test_fpn_and_retina_head_parameters_match_detectron2():
    """detectron2 tests/test_model_analysis.py, RetinaNet R50-FPN (same FPN with P6 on C5 and
    same head, 80 classes, FrozenBN so BN affine parameters are buffers): 37,915,572 in all,
    31,452,352 in `backbone` (= ResNet-50 + FPN). ResNet-50 without fc and BN affine:
    25,557,032 - 2,049,000 - 53,120 = 23,454,912."""
    detector = build_detector(ModelConfig(arch="retinanet-r101"))
    assert _count(detector.neck) == 31_452_352 - 23_454_912 == 7_997_440
    assert _count(detector.head) == 37_915_572 - 31_452_352 == 6_463_220
