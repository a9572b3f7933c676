"""The built-in synthetic dataset: determinism, statistics, COCO validity, atomic writes, video, cache."""
import filecmp
import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from babo_edge.calibration import scene, synthetic
from babo_edge.calibration.coco import CocoDetection, instance_mask, segmentation_to_mask

REPO_ROOT = Path(__file__).resolve().parent.parent
SMALL_COUNTS = {"train": 48, "val": 4, "calib": 4, "video": 10}
TINY_COUNTS = {"train": 3, "val": 1, "calib": 1, "video": 0}


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory) -> Path:
    return synthetic.generate(tmp_path_factory.mktemp("synthetic") / "small", counts=SMALL_COUNTS, progress=False)


def load_json(path: Path) -> dict:
    return json.loads(path.read_text())


def test_layout_and_manifest(small_dataset):
    manifest = synthetic.read_manifest(small_dataset)
    assert manifest["generator_version"] == synthetic.GENERATOR_VERSION and manifest["seed"] == 0
    assert manifest["counts"] == SMALL_COUNTS
    assert manifest["background_photos"] >= 5  # photos bundled with scikit-image, no download
    for split, count in SMALL_COUNTS.items():
        ann_file, images_dir = synthetic.split_files(small_dataset, split)
        document = load_json(ann_file)
        assert len(document["images"]) == count == len(list(images_dir.glob("*.jpg")))
        assert [c["name"] for c in document["categories"]] == list(scene.CLASS_NAMES)
        assert manifest["splits"][split] == {key: document["info"][key] for key in manifest["splits"][split]}
    assert not list(small_dataset.parent.glob(".small.*"))  # no staging folder left behind


def test_same_seed_gives_identical_bytes_whatever_the_worker_count(small_dataset, tmp_path):
    again = synthetic.generate(tmp_path / "again", counts=SMALL_COUNTS, progress=False, workers=1)
    comparison = filecmp.dircmp(small_dataset, again)
    files = [path.relative_to(small_dataset) for path in small_dataset.rglob("*") if path.is_file()]
    assert len(files) == sum(SMALL_COUNTS.values()) + 4 + 1 + 1  # images, 4 json, video, manifest
    _, mismatches, errors = filecmp.cmpfiles(small_dataset, again, files, shallow=False)
    assert mismatches == [] and errors == [] and comparison.left_only == comparison.right_only == []


def test_each_split_is_reproducible_on_its_own_and_seeds_matter(small_dataset, tmp_path):
    val_only = synthetic.generate(tmp_path / "val_only", counts={"train": 0, "val": 2, "calib": 0, "video": 0}, progress=False)
    assert not (val_only / "instances_train.json").exists()
    for name in ["000000.jpg", "000001.jpg"]:
        assert (val_only / "images/val" / name).read_bytes() == (small_dataset / "images/val" / name).read_bytes()
    first_annotations = [a for a in load_json(small_dataset / "instances_val.json")["annotations"] if a["image_id"] <= 2]
    assert load_json(val_only / "instances_val.json")["annotations"] == first_annotations

    other_seed = synthetic.generate(tmp_path / "seed1", seed=1, counts={"train": 0, "val": 2, "calib": 0, "video": 0},
                                    progress=False)
    assert (other_seed / "images/val/000000.jpg").read_bytes() != (val_only / "images/val/000000.jpg").read_bytes()


def test_annotations_load_with_coco_loader_and_match_the_recorded_statistics(small_dataset):
    document = load_json(small_dataset / "instances_train.json")
    info = document["info"]
    assert 0.2 <= info["mean_fg_ratio"] <= 0.5
    dataset = CocoDetection(*synthetic.split_files(small_dataset, "train"))
    fg_ratios = [instance_mask(dataset[i]).mean() for i in range(len(dataset))]
    assert round(float(np.mean(fg_ratios)), 4) == info["mean_fg_ratio"]

    sides = [side for image in document["images"] for side in (image["width"], image["height"])]
    assert 320 <= min(sides) and max(sides) <= 448 and len(set(sides)) > 10
    annotations = document["annotations"]
    assert min(a["area"] for a in annotations) >= scene.MIN_VISIBLE_PIXELS
    small, medium, large = (info["size_buckets"][name] for name in ("small", "medium", "large"))
    assert min(small, medium, large) >= 0.2 * info["instances"]  # all COCO size buckets well populated
    assert sum(a["area"] < 32**2 for a in annotations if not a["iscrowd"]) == small
    encodings = [
        "crowd" if a["iscrowd"] else "polygons" if isinstance(a["segmentation"], list) else "compressed"
        for a in annotations
    ]
    assert encodings.count("polygons") > 0.6 * len(annotations)
    assert encodings.count("compressed") > 0 and encodings.count("crowd") > 0
    crowd = next(a for a in annotations if a["iscrowd"])
    assert isinstance(crowd["segmentation"]["counts"], list)  # uncompressed, as in COCO
    for split in ("val", "calib", "video"):
        assert not any(a["iscrowd"] for a in load_json(small_dataset / f"instances_{split}.json")["annotations"])


def test_boxes_and_areas_agree_with_the_decoded_masks(small_dataset):
    document = load_json(small_dataset / "instances_val.json")
    sizes = {image["id"]: (image["height"], image["width"]) for image in document["images"]}
    for annotation in document["annotations"]:
        mask = segmentation_to_mask(annotation["segmentation"], *sizes[annotation["image_id"]])
        rows, columns = np.nonzero(mask)
        x, y, w, h = annotation["bbox"]
        assert (x, y, w, h) == (columns.min(), rows.min(), columns.max() - columns.min() + 1, rows.max() - rows.min() + 1)
        assert annotation["area"] == mask.sum()


def test_object_counts_and_empty_images_follow_the_spec():
    counts = [
        len(scene.random_things(np.random.default_rng(index), 400, 400, allow_crowd=False)) for index in range(2000)
    ]
    assert min(counts) == 0 and max(counts) == scene.MAX_OBJECTS
    assert 0.03 <= counts.count(0) / len(counts) <= 0.07


def test_polygons_traced_from_masks_rasterize_back_exactly():
    rng = np.random.default_rng(3)
    for class_index in range(len(scene.CLASS_NAMES)):
        if scene.CLASS_NAMES[class_index] == "ring":
            continue  # a hole cannot be a polygon; rings are stored as RLE
        for _ in range(5):
            shape = scene.random_shape(rng, class_index, (rng.uniform(20, 100), rng.uniform(20, 80)), rng.uniform(30, 4000))
            mask = scene._rasterize(shape, 100, 120)
            decoded = segmentation_to_mask(scene.mask_to_polygons(mask), 100, 120).astype(bool)
            assert (decoded ^ mask).sum() == 0


def test_uncompressed_rle_round_trips_through_pycocotools():
    mask = np.zeros((6, 5), dtype=bool)
    mask[0, 0] = mask[2:5, 1] = mask[5, 4] = True
    rle = scene.uncompressed_rle(mask)
    assert rle == {"size": [6, 5], "counts": [0, 1, 7, 3, 18, 1]}  # column-major, first run is background
    np.testing.assert_array_equal(segmentation_to_mask(rle, 6, 5), mask)


def square(center, area, class_index=1):
    return scene.Thing((scene.Shape(class_index, center, area, 1.0, 0.0, ((255, 0, 0), (255, 0, 0)), "flat", 4.0, 0.0, 0.0),))


def test_occluded_objects_lose_hidden_pixels_and_vanish_below_a_fifth_visible():
    background = np.zeros((100, 100, 3), np.uint8)
    rng = np.random.default_rng(0)
    half_hidden = [square((40, 50), 400), square((50, 50), 400)]  # 20x20 squares shifted by 10 px
    _, annotations, foreground = scene.render_scene(rng, background, half_hidden)
    assert [a["area"] for a in annotations] == [200, 400]
    assert foreground == pytest.approx(600 / 10000)
    mostly_hidden = [square((47, 50), 400), square((50, 50), 400)]  # only 3 of 20 columns remain: 15%
    _, annotations, _ = scene.render_scene(rng, background, mostly_hidden)
    assert [a["area"] for a in annotations] == [400]


def test_interrupted_generation_leaves_no_dataset_and_keeps_the_previous_one(tmp_path, monkeypatch):
    written = []

    def fail_on_third_image(path, image):
        if len(written) == 2:
            raise KeyboardInterrupt
        written.append(path)

    monkeypatch.setattr(synthetic, "_write_jpeg", fail_on_third_image)
    with pytest.raises(KeyboardInterrupt):
        synthetic.generate(tmp_path / "fresh", counts=TINY_COUNTS, progress=False, workers=1)
    assert list(tmp_path.iterdir()) == []

    previous = tmp_path / "existing"
    previous.mkdir()
    (previous / "marker").write_text("old dataset")
    written.clear()
    with pytest.raises(KeyboardInterrupt):
        synthetic.generate(previous, counts=TINY_COUNTS, progress=False, workers=1)
    assert list(tmp_path.iterdir()) == [previous] and (previous / "marker").read_text() == "old dataset"

    monkeypatch.undo()
    synthetic.generate(previous, counts=TINY_COUNTS, progress=False, workers=1)
    assert list(tmp_path.iterdir()) == [previous] and not (previous / "marker").exists()
    assert synthetic.read_manifest(previous)["counts"] == TINY_COUNTS


def test_video_is_readable_and_matches_its_annotations(small_dataset):
    capture = cv2.VideoCapture(str(small_dataset / synthetic.VIDEO_FILE))
    assert capture.get(cv2.CAP_PROP_FPS) == synthetic.VIDEO_FPS
    frames = []
    while (frame := capture.read())[0]:
        frames.append(frame[1][:, :, ::-1])
    capture.release()
    assert len(frames) == SMALL_COUNTS["video"]
    width, height = synthetic.VIDEO_SIZE
    assert frames[0].shape == (height, width, 3)
    stills = sorted((small_dataset / "images/video").glob("*.jpg"))
    for index in (0, len(frames) - 1):  # frame i of the clip is image i of instances_video.json
        still = cv2.imread(str(stills[index]))[:, :, ::-1].astype(int)
        assert np.abs(frames[index].astype(int) - still).mean() < 6
        other = cv2.imread(str(stills[len(frames) - 1 - index]))[:, :, ::-1].astype(int)
        assert np.abs(frames[index].astype(int) - other).mean() > np.abs(frames[index].astype(int) - still).mean()

    annotations = load_json(small_dataset / "instances_video.json")["annotations"]
    tracks = {}
    for annotation in annotations:
        x, y, w, h = annotation["bbox"]
        tracks.setdefault(annotation["track_id"], []).append((annotation["image_id"], x + w / 2, y + h / 2))
    assert 2 <= len(tracks) <= 4
    longest = max(tracks.values(), key=len)
    assert len(longest) >= 8
    steps = [np.hypot(x2 - x1, y2 - y1) for (i1, x1, y1), (i2, x2, y2) in zip(longest, longest[1:]) if i2 == i1 + 1]
    assert 0 < np.mean(steps) and max(steps) < 20  # smooth motion


def test_without_photos_backgrounds_fall_back_to_procedural(tmp_path, monkeypatch):
    monkeypatch.setattr(scene, "load_photos", lambda: ())
    out_dir = synthetic.generate(tmp_path / "no_photos", counts=TINY_COUNTS, progress=False, workers=1)
    assert synthetic.read_manifest(out_dir)["background_photos"] == 0
    image = cv2.imread(str(out_dir / "images/train/000000.jpg"))
    assert image is not None and image.std() > 10


def test_cache_location_and_one_time_generation(tmp_path, monkeypatch):
    monkeypatch.delenv("BABO_DATA_DIR", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert synthetic.default_dataset_dir() == tmp_path / "home/.cache/babo-edge/synthetic-v1"
    monkeypatch.setenv("BABO_DATA_DIR", str(tmp_path / "cache"))
    assert synthetic.default_dataset_dir() == tmp_path / "cache"

    monkeypatch.setattr(synthetic, "DEFAULT_COUNTS", TINY_COUNTS)
    assert synthetic.ensure_default_dataset(progress=False) == tmp_path / "cache"
    stamp = (tmp_path / "cache/manifest.json").stat().st_mtime_ns
    synthetic.ensure_default_dataset(progress=False)
    assert (tmp_path / "cache/manifest.json").stat().st_mtime_ns == stamp  # up to date: not regenerated

    manifest = synthetic.read_manifest(tmp_path / "cache")
    (tmp_path / "cache/manifest.json").write_text(json.dumps({**manifest, "generator_version": 0}))
    synthetic.ensure_default_dataset(progress=False)
    assert synthetic.read_manifest(tmp_path / "cache")["generator_version"] == synthetic.GENERATOR_VERSION


def test_generate_rejects_unknown_splits_and_negative_counts(tmp_path):
    with pytest.raises(ValueError, match="counts must map"):
        synthetic.generate(tmp_path / "x", counts={"test": 3}, progress=False)
    with pytest.raises(ValueError, match="counts must map"):
        synthetic.generate(tmp_path / "x", counts={"val": -1}, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_cli_runs_from_any_directory_and_prints_a_summary(tmp_path):
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "calibration/make_dataset.py"), "--out", str(tmp_path / "cli"),
         "--train", "2", "--val", "1", "--calib", "1", "--video", "3", "--quiet"],
        cwd=tmp_path, capture_output=True, text=True, check=True,
    )
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(str(tmp_path / "cli")) and "train 2 img" in lines[0] and "video 3 img" in lines[0]
    assert synthetic.read_manifest(tmp_path / "cli")["counts"] == {"train": 2, "val": 1, "calib": 1, "video": 3}
