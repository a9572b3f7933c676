"""SSD augmentation keeps image, boxes and mask consistent."""
import numpy as np
import pytest

from babo_edge.train.augment import Example, expand, hflip, min_iou_random_crop, resize, ssd_augment, _iou


def example():
    image = np.zeros((100, 150, 3), np.uint8)
    mask = np.zeros((100, 150), np.uint8)
    boxes = np.array([[20, 30, 60, 70], [100, 10, 140, 50]], np.float32)
    for x1, y1, x2, y2 in boxes.astype(int):
        image[y1:y2, x1:x2] = 255
        mask[y1:y2, x1:x2] = 1
    return Example(image, boxes, np.array([0, 1]), mask)


def assert_consistent(ex):
    """Every box covers white, masked pixels; outside all boxes the mask is 0."""
    covered = np.zeros(ex.mask.shape, bool)
    for x1, y1, x2, y2 in np.round(ex.boxes).astype(int):
        assert ex.mask[y1:y2, x1:x2].mean() > 0.9
        covered[y1:y2, x1:x2] = True
    assert ex.mask[~covered].sum() == 0


def test_flip_and_expand_move_boxes_with_pixels():
    flipped = hflip(example())
    assert flipped.boxes[0].tolist() == [90, 30, 130, 70]
    assert_consistent(flipped)
    grown = expand(example(), np.random.default_rng(0), mean=(123, 117, 104))
    assert grown.image.shape[0] >= 100 and grown.mask.sum() == example().mask.sum()
    assert_consistent(grown)


def test_crop_respects_min_iou_and_keeps_centres():
    for seed in range(30):
        out = min_iou_random_crop(example(), np.random.default_rng(seed))
        assert len(out.boxes) == len(out.labels) >= 1
        assert np.all(out.boxes[:, 2:] <= np.array(out.image.shape[1::-1]) + 1e-3)
        assert_consistent(out)


def test_full_pipeline_output_size_and_consistency():
    for seed in range(20):
        out = ssd_augment(example(), np.random.default_rng(seed), (64, 96), mean=(123, 117, 104))
        assert out.image.shape == (64, 96, 3) and out.mask.shape == (64, 96)
        assert out.boxes.shape[1] == 4 and len(out.boxes) == len(out.labels) >= 1
        assert np.all(out.boxes[:, 2] > out.boxes[:, 0]) and np.all(out.boxes[:, 3] > out.boxes[:, 1])
        assert np.all(out.boxes >= -1e-3) and np.all(out.boxes[:, 2:] <= np.array([96, 64]) + 1e-3)
        # every kept box sits on its object's mask (a dropped object's visible part keeps its
        # mask: it is still foreground, only its box is gone, as SSD's crop does)
        for x1, y1, x2, y2 in np.round(out.boxes).astype(int):
            assert out.mask[y1:y2, x1:x2].mean() > 0.75, seed  # a rounded row of a ~10 px box is 10%
        assert out.mask.sum() >= sum((x2 - x1) * (y2 - y1) for x1, y1, x2, y2 in np.round(out.boxes)) * 0.75


def test_resize_scales_boxes():
    out = resize(example(), (50, 300))
    assert out.boxes[0].tolist() == pytest.approx([40, 15, 120, 35])


def test_iou_helper():
    assert _iou(np.array([[0, 0, 10, 10]], np.float32), np.array([0, 0, 10, 20], np.float32))[0] == pytest.approx(0.5)
