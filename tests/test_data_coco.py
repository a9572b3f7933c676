"""CocoDetection on a hand-written COCO file covering every segmentation encoding, plus the GT mask helpers."""
import copy
import json

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from babo_edge.calibration.coco import CocoDetection, Sample, box_mask, instance_mask
from babo_edge.calibration.errors import DatasetError, ImageReadError

# 40x30 image "scene.png" with one object per encoding; rows/columns of each mask are in the comments.
RECTANGLE = np.zeros((30, 40), dtype=np.uint8)
RECTANGLE[20:25, 2:8] = 1  # stored as compressed RLE
ANNOTATIONS = [
    {"id": 1, "image_id": 7, "category_id": 7, "bbox": [10, 5, 10, 10], "iscrowd": 0,  # rows 5-14, columns 10-19
     "segmentation": [[10, 5, 20, 5, 20, 15, 10, 15]]},
    {"id": 2, "image_id": 7, "category_id": 3, "bbox": [2, 20, 6, 5], "iscrowd": 0,
     "segmentation": {"size": [30, 40], "counts": mask_utils.encode(np.asfortranarray(RECTANGLE))["counts"].decode()}},
    {"id": 3, "image_id": 7, "category_id": 3, "bbox": [30, 0, 4, 2], "iscrowd": 0,  # rows 0-1, columns 30-33
     "segmentation": {"size": [30, 40], "counts": [900, 2, 28, 2, 28, 2, 28, 2, 208]}},
    {"id": 4, "image_id": 7, "category_id": 7, "bbox": [36, 25, 4, 5], "iscrowd": 1,  # crowd: rows 25-29, columns 36-39
     "segmentation": {"size": [30, 40], "counts": [1105, 5, 25, 5, 25, 5, 25, 5]}},
    {"id": 5, "image_id": 7, "category_id": 3, "bbox": [5, 5, 0, 4], "iscrowd": 0,  # zero width: dropped
     "segmentation": [[5, 5, 5, 9, 6, 9]]},
    {"id": 6, "image_id": 7, "category_id": 3, "bbox": [-5, 26, 10, 10], "iscrowd": 0,  # clipped to columns 0-4, rows 26-29
     "segmentation": []},
    {"id": 7, "image_id": 7, "category_id": 5, "bbox": [50, 0, 5, 5], "iscrowd": 0,  # outside the image: dropped
     "segmentation": [[50, 0, 55, 0, 55, 5]]},
    {"id": 8, "image_id": 5, "category_id": 5, "bbox": [0, 0, 10, 10], "iscrowd": 0,
     "segmentation": [[0, 0, 10, 0, 0, 10]]},
]
COCO = {
    "images": [
        {"id": 7, "file_name": "scene.png", "width": 40, "height": 30},
        {"id": 2, "file_name": "gray.png", "width": 16, "height": 12},
        {"id": 9, "file_name": "cmyk.jpg", "width": 24, "height": 16},
        {"id": 5, "file_name": "alpha.png", "width": 20, "height": 10},
    ],
    "annotations": ANNOTATIONS,
    "categories": [{"id": 7, "name": "cat"}, {"id": 3, "name": "dog"}, {"id": 5, "name": "bird"}],
}


def write_dataset(root, coco=COCO):
    images = root / "images"
    images.mkdir(exist_ok=True)
    Image.fromarray(np.full((30, 40, 3), (10, 200, 30), np.uint8)).save(images / "scene.png")
    Image.fromarray(np.full((12, 16), 77, np.uint8)).save(images / "gray.png")
    Image.fromarray(np.full((10, 20, 4), (250, 5, 5, 0), np.uint8)).save(images / "alpha.png")
    Image.fromarray(np.full((16, 24, 3), (30, 60, 220), np.uint8)).convert("CMYK").save(images / "cmyk.jpg", quality=95)
    ann_file = root / "instances_test.json"
    ann_file.write_text(json.dumps(coco))
    return ann_file, images


@pytest.fixture
def dataset(tmp_path):
    return CocoDetection(*write_dataset(tmp_path))


def test_categories_map_to_contiguous_labels_sorted_by_id(dataset):
    assert dataset.category_ids == [3, 5, 7]
    assert dataset.class_names == ["dog", "bird", "cat"]
    assert len(dataset) == 4
    assert [dataset[i].image_id for i in range(4)] == [2, 5, 7, 9]


def test_every_segmentation_encoding_decodes_to_the_right_pixels(dataset):
    sample = dataset[2]
    assert (sample.image_id, sample.file_name) == (7, "scene.png")
    assert sample.image.shape == (30, 40, 3) and sample.image.dtype == np.uint8
    np.testing.assert_array_equal(sample.image[0, 0], [10, 200, 30])
    np.testing.assert_array_equal(sample.labels, [2, 0, 0, 2, 0])
    assert sample.labels.dtype == np.int64
    np.testing.assert_array_equal(sample.iscrowd, [False, False, False, True, False])
    assert sample.boxes.dtype == np.float32
    np.testing.assert_array_equal(sample.boxes, [[10, 5, 20, 15], [2, 20, 8, 25], [30, 0, 34, 2], [36, 25, 40, 30],
                                                 [0, 26, 5, 30]])
    masks = sample.instance_masks
    assert masks.shape == (5, 30, 40) and masks.dtype == np.uint8 and set(np.unique(masks)) == {0, 1}
    expected_regions = [(slice(5, 15), slice(10, 20)), (slice(20, 25), slice(2, 8)), (slice(0, 2), slice(30, 34)),
                        (slice(25, 30), slice(36, 40)), (slice(26, 30), slice(0, 5))]
    for mask, (rows, columns) in zip(masks, expected_regions):
        expected = np.zeros((30, 40), np.uint8)
        expected[rows, columns] = 1
        np.testing.assert_array_equal(mask, expected)


def test_image_without_annotations_has_empty_arrays_of_the_right_shape(dataset):
    sample = dataset[0]
    assert sample.image.shape == (12, 16, 3)
    np.testing.assert_array_equal(sample.image[3, 3], [77, 77, 77])
    assert sample.boxes.shape == (0, 4) and sample.boxes.dtype == np.float32
    assert sample.labels.shape == (0,) and sample.labels.dtype == np.int64
    assert sample.instance_masks.shape == (0, 12, 16) and sample.instance_masks.dtype == np.uint8
    assert sample.iscrowd.shape == (0,) and sample.iscrowd.dtype == bool
    assert instance_mask(sample).shape == (12, 16) and instance_mask(sample).sum() == 0
    assert box_mask(sample).sum() == 0


def test_rgba_and_cmyk_images_load_as_rgb(dataset):
    alpha = dataset[1]
    np.testing.assert_array_equal(alpha.image[5, 5], [250, 5, 5])
    assert alpha.labels.tolist() == [1] and 40 <= alpha.instance_masks.sum() <= 60  # triangle of area 50
    cmyk = dataset[3].image
    assert cmyk.shape == (16, 24, 3)
    assert np.abs(cmyk[8, 12].astype(int) - [30, 60, 220]).max() <= 6


def test_instance_mask_is_the_union_of_all_instances_crowd_included(dataset):
    union = instance_mask(dataset[2])
    assert union.dtype == np.uint8 and union.shape == (30, 40)
    assert union.sum() == 100 + 30 + 8 + 20 + 20
    assert union[27, 38] == 1  # crowd pixel
    assert union[0, 0] == 0


def test_box_mask_fills_boxes_rounding_fractional_edges_outwards():
    boxes = np.array([[1.5, 1.0, 4.0, 3.2], [3.0, 2.0, 6.0, 4.0], [-3.0, 7.0, 2.0, 20.0]], dtype=np.float32)
    sample = Sample(np.zeros((8, 10, 3), np.uint8), boxes, np.zeros(3, np.int64), np.zeros((3, 8, 10), np.uint8),
                    np.zeros(3, bool), 1, "x.png")
    expected = np.zeros((8, 10), np.uint8)
    expected[1:4, 1:4] = 1  # x 1.5-4 covers columns 1-3, y 1-3.2 rows 1-3
    expected[2:4, 3:6] = 1
    expected[7:8, 0:2] = 1  # clipped at the image border
    np.testing.assert_array_equal(box_mask(sample), expected)


def mutated(change):
    coco = copy.deepcopy(COCO)
    change(coco)
    return coco


@pytest.mark.parametrize("change, message", [
    (lambda coco: coco.pop("annotations"), "has no 'annotations' list"),
    (lambda coco: coco["images"][1].pop("file_name"), "images[1] has no 'file_name'"),
    (lambda coco: coco["annotations"][0].update(category_id=99), "annotation 1 refers to unknown category id 99"),
    (lambda coco: coco["annotations"][0].update(image_id=99), "annotation 1 refers to unknown image id 99"),
])
def test_malformed_annotation_files_are_rejected_at_construction(tmp_path, change, message):
    ann_file, images = write_dataset(tmp_path, mutated(change))
    with pytest.raises(DatasetError) as error:
        CocoDetection(ann_file, images)
    assert message in str(error.value) and str(ann_file) in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize("change, message", [
    (lambda coco: coco["images"][0].update(width=41), "image 'scene.png' is 40x30 but the annotations say 41x30"),
    (lambda coco: coco["annotations"][1]["segmentation"].update(size=[31, 40]), "annotation 2 has an RLE of size [31, 40]"),
    (lambda coco: coco["annotations"][0].update(segmentation="oops"), "annotation 1 has a segmentation that is neither"),
])
def test_inconsistent_entries_are_reported_when_loaded(tmp_path, change, message):
    dataset = CocoDetection(*write_dataset(tmp_path, mutated(change)))
    with pytest.raises(DatasetError, match=message.replace("[", r"\[")):
        dataset[2]


def test_missing_files_give_one_line_errors(tmp_path):
    ann_file, images = write_dataset(tmp_path)
    with pytest.raises(DatasetError, match="annotation file .*missing.json' does not exist"):
        CocoDetection(tmp_path / "missing.json", images)
    with pytest.raises(DatasetError, match="images folder .*nowhere' does not exist"):
        CocoDetection(ann_file, tmp_path / "nowhere")
    (images / "scene.png").unlink()
    dataset = CocoDetection(ann_file, images)
    with pytest.raises(ImageReadError, match="scene.png': file not found"):
        dataset[2]
    assert isinstance(ImageReadError("x"), DatasetError)


def test_invalid_json_gives_one_line_error(tmp_path):
    _, images = write_dataset(tmp_path)
    broken = tmp_path / "broken.json"
    broken.write_text('{"images": [')
    with pytest.raises(DatasetError, match="broken.json' is not valid JSON") as error:
        CocoDetection(broken, images)
    assert "\n" not in str(error.value)
    listing = tmp_path / "list.json"
    listing.write_text("[]")
    with pytest.raises(DatasetError, match="list.json' is not a COCO object"):
        CocoDetection(listing, images)
