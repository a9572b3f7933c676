"""Anchors per level and the box coder."""
import math

import pytest
import torch

from babo_edge.models.anchors import (BoxCoder, retinanet_anchors, ssd300_priors, ssd512_priors, ssd_priors,
                                      ssdlite_priors)
from babo_edge.models.builders import ModelConfig, build_model


@pytest.mark.parametrize("size, feature_sizes, total", [
    (512, [32, 16, 8, 4, 2, 1], 6 * (32 ** 2 + 16 ** 2 + 8 ** 2 + 4 ** 2 + 2 ** 2 + 1)),  # 8190
    (320, [20, 10, 5, 3, 2, 1], 3234),  # MMDetection's SSDLite-320 anchor count
])
def test_ssdlite_anchor_count_per_level(size, feature_sizes, total):
    model = build_model(ModelConfig(num_classes=80, input_size=(size, size), omg=False)).eval()
    features = model.detector.neck(model.detector.backbone(torch.zeros(1, 3, size, size)))
    assert [f.shape[-1] for f in features] == feature_sizes
    assert [f.shape[1] for f in features] == [576, 1280, 512, 256, 256, 128]
    with torch.no_grad():
        out = model(torch.zeros(1, 3, size, size))
    assert out.anchors.shape == (total, 4) == (out.cls_logits.shape[1], 4)
    assert out.cls_logits.shape == (1, total, 81) and out.box_deltas.shape == (1, total, 4)


def test_ssdlite_prior_shapes_at_320():
    """First location of level 0 and of the last level, checked against the SSD definition."""
    cfg = ssdlite_priors()
    assert cfg.anchors_per_location() == [6] * 6
    priors = ssd_priors(cfg, [(20, 20), (10, 10), (5, 5), (3, 3), (2, 2), (1, 1)], (320, 320))
    first = priors[:6]
    wh = first[:, 2:] - first[:, :2]
    centre = (first[:, 2:] + first[:, :2]) / 2
    assert torch.allclose(centre, torch.tensor([8.0, 8.0]).expand(6, 2))
    expected = [(48, 48), (math.sqrt(48 * 100),) * 2,
                (48 * math.sqrt(2), 48 / math.sqrt(2)), (48 / math.sqrt(2), 48 * math.sqrt(2)),
                (48 * math.sqrt(3), 48 / math.sqrt(3)), (48 / math.sqrt(3), 48 * math.sqrt(3))]
    assert torch.allclose(wh, torch.tensor(expected, dtype=torch.float32), atol=1e-4)
    last = priors[-6:]
    assert torch.allclose((last[:, 2:] + last[:, :2]) / 2, torch.tensor([160.0, 160.0]).expand(6, 2))
    assert torch.allclose(last[0, 2:] - last[0, :2], torch.tensor([304.0, 304.0]), atol=1e-4)
    # location-major, anchor-minor: anchor 6 is the second cell (x = 24) of row 0
    assert torch.allclose((priors[6, 0] + priors[6, 2]) / 2, torch.tensor(24.0))


def test_retinanet_anchors_per_cell():
    anchors = retinanet_anchors([(2, 3)], (16, 24), strides=(8,))
    assert anchors.shape == (2 * 3 * 9, 4)
    wh = anchors[:9, 2:] - anchors[:9, :2]
    areas = (wh[:, 0] * wh[:, 1]).sqrt()
    base = 8 * 4 * torch.tensor([1, 2 ** (1 / 3), 2 ** (2 / 3)])
    assert torch.allclose(areas.view(3, 3), base.expand(3, 3), atol=1e-3)  # 3 scales per ratio
    centres = (anchors[::9, :2] + anchors[::9, 2:]) / 2
    assert centres[:4].tolist() == [[0, 0], [8, 0], [16, 0], [0, 8]]  # MMDetection: offset 0
    assert torch.allclose(wh[:3, 1] / wh[:3, 0], torch.tensor(0.5))  # ratio h/w first = 0.5


@pytest.mark.parametrize("variances", [(0.1, 0.1, 0.2, 0.2), (1.0, 1.0, 1.0, 1.0)])
def test_box_coder_round_trip(variances):
    g = torch.Generator().manual_seed(0)
    anchors = torch.rand(50, 2, generator=g) * 200
    anchors = torch.cat([anchors, anchors + 10 + torch.rand(50, 2, generator=g) * 90], dim=1)
    boxes = torch.rand(50, 2, generator=g) * 200
    boxes = torch.cat([boxes, boxes + 5 + torch.rand(50, 2, generator=g) * 150], dim=1)
    coder = BoxCoder(variances)
    deltas = coder.encode(boxes, anchors)
    assert torch.allclose(coder.decode(deltas, anchors), boxes, atol=1e-3)
    assert torch.allclose(coder.encode(anchors, anchors), torch.zeros(50, 4), atol=1e-6)
    # variances scale the regression targets
    assert torch.allclose(BoxCoder((1, 1, 1, 1)).encode(boxes, anchors) / torch.tensor(variances),
                          BoxCoder(variances).encode(boxes, anchors), atol=1e-5)


def test_ssd300_priors_are_mmdetections_sizes_and_rounded_strides():
    cfg = ssd300_priors()
    assert [round(s * 300) for s in cfg.min_sizes] == [21, 45, 99, 153, 207, 261]
    assert [round(s * 300) for s in cfg.max_sizes] == [45, 99, 153, 207, 261, 315]
    assert cfg.anchors_per_location() == [4, 6, 6, 6, 4, 4]
    hws = [(38, 38), (19, 19), (10, 10), (5, 5), (3, 3), (1, 1)]
    anchors = ssd_priors(cfg, hws, (300, 300))
    centres = (anchors[:, :2] + anchors[:, 2:]) / 2
    # Level 0 steps 8 px, not 300 / 38: centres 4, 12, ..., 300; level 4 steps 100 px: 50, 150, 250.
    assert centres[0].tolist() == [4.0, 4.0] and centres[4 * 37].tolist() == [300.0, 4.0]
    level4 = centres[38 * 38 * 4 + (19 * 19 + 10 * 10 + 5 * 5) * 6:][: 9 * 4: 4]
    assert sorted({x for x, _ in level4.tolist()}) == [50.0, 150.0, 250.0]


def test_ssd512_prior_sizes_are_mmdetections():
    cfg = ssd512_priors()
    assert [round(s * 512) for s in cfg.min_sizes] == [20, 51, 133, 215, 296, 378, 460]
    assert [round(s * 512) for s in cfg.max_sizes] == [51, 133, 215, 296, 378, 460, 542]
    assert cfg.anchors_per_location() == [4, 6, 6, 6, 6, 4, 4]
