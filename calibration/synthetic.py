"""The package's built-in detection dataset, generated deterministically in COCO format.

Nothing can be downloaded at run time, so training, evaluation, INT8
calibration and the demo all default to this dataset. Every image is a pure
function of (master seed, split, index), so splits are reproducible on their
own and the output is byte-identical from run to run.

Layout of a generated dataset folder:
    instances_<split>.json, images/<split>/<index>.jpg   for split in train, val, calib, video
    video.mp4       the video split as a 15 fps clip (frame i = image id i + 1)
    manifest.json   generator version, seed, counts and per-split statistics
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import multiprocessing
import os
import shutil
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from babo_edge.calibration import scene
from babo_edge.calibration.coco import SIZE_BUCKETS

GENERATOR_VERSION = 1
DEFAULT_SEED = 0
SPLITS = ("train", "val", "calib", "video")
VIDEO_FRAMES = 120
DEFAULT_COUNTS = {"train": 2000, "val": 250, "calib": 300, "video": VIDEO_FRAMES}
VIDEO_FILE = "video.mp4"
VIDEO_FPS = 15
VIDEO_SIZE = (416, 320)  # width, height; even sides for the mp4v encoder
JPEG_QUALITY = 92


def default_dataset_dir() -> Path:
    """Where the built-in dataset is cached: $BABO_DATA_DIR, else ~/.cache/babo-edge/synthetic-v1."""
    configured = os.environ.get("BABO_DATA_DIR")
    return Path(configured) if configured else Path.home() / ".cache" / "babo-edge" / f"synthetic-v{GENERATOR_VERSION}"


def ensure_default_dataset(progress: bool = True) -> Path:
    """Generate the default dataset into default_dataset_dir() unless an up-to-date copy is there."""
    out_dir = default_dataset_dir()
    manifest = read_manifest(out_dir)
    if manifest and (manifest.get("generator_version"), manifest.get("seed"), manifest.get("counts")) == (
        GENERATOR_VERSION, DEFAULT_SEED, DEFAULT_COUNTS,
    ):
        return out_dir
    return generate(out_dir, seed=DEFAULT_SEED, progress=progress)


def read_manifest(dataset_dir: str | os.PathLike) -> dict | None:
    """The manifest of a generated dataset, or None if there is none (not generated, or not by us)."""
    try:
        return json.loads((Path(dataset_dir) / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def split_files(dataset_dir: str | os.PathLike, split: str) -> tuple[Path, Path]:
    """(annotation file, images folder) of a split, the two arguments of CocoDetection."""
    dataset_dir = Path(dataset_dir)
    return dataset_dir / f"instances_{split}.json", dataset_dir / "images" / split


def generate(
    out_dir: str | os.PathLike,
    seed: int = DEFAULT_SEED,
    counts: dict[str, int] | None = None,
    progress: bool = True,
    workers: int = 2,
) -> Path:
    """Write the dataset to `out_dir`, replacing what is there only once everything is written.

    `counts` overrides images per split (DEFAULT_COUNTS for the rest; 0 skips a
    split). The work happens in a temporary sibling folder that is renamed to
    `out_dir` at the end, so an interrupted run leaves no half-written dataset.
    """
    out_dir = Path(out_dir).absolute()
    counts = {**DEFAULT_COUNTS, **(counts or {})}
    if set(counts) != set(SPLITS) or any(not isinstance(n, int) or n < 0 for n in counts.values()):
        raise ValueError(f"counts must map {SPLITS} to non-negative integers, got {counts}")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = out_dir.with_name(f".{out_dir.name}.partial-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        _write_dataset(staging, seed, counts, progress, workers)
        _replace_dir(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out_dir


def _write_dataset(root: Path, seed: int, counts: dict[str, int], progress: bool, workers: int) -> None:
    photos = scene.load_photos()
    tasks = [(seed, split, index, root) for split in SPLITS for index in range(counts[split])]
    for split in SPLITS:
        if counts[split]:
            (root / "images" / split).mkdir(parents=True)
    results = {split: [] for split in SPLITS}
    with contextlib.closing(_render_all(tasks, workers)) as rendered:  # closing stops the workers on errors too
        for split, result in tqdm(rendered, total=len(tasks), disable=not progress, desc="synthetic dataset", unit="img"):
            results[split].append(result)
    statistics = {}
    for split in SPLITS:
        if counts[split]:
            statistics[split] = _write_annotation_file(root, split, seed, results[split])
    if counts["video"]:
        _write_video(root / VIDEO_FILE, [frame for _, _, _, frame in results["video"]])
    manifest = {
        "generator_version": GENERATOR_VERSION,
        "seed": seed,
        "counts": counts,
        "class_names": list(scene.CLASS_NAMES),
        "background_photos": len(photos),
        "video": {"file": VIDEO_FILE, "fps": VIDEO_FPS, "frames": counts["video"]} if counts["video"] else None,
        "splits": statistics,
    }
    (root / "manifest.json").write_text(json.dumps(manifest, indent=2), encoding="utf-8")


def _render_all(tasks: list[tuple], workers: int) -> Iterator[tuple[str, tuple]]:
    """Results of _render_and_write in task order, computed by `workers` processes if more than one."""
    if workers <= 1 or len(tasks) <= 1:
        yield from map(_render_and_write, tasks)
        return
    # spawned, not forked: a fork of a process that already ran opencv threads can crash or hang.
    # One opencv thread per worker, as the workers already fill the cores.
    context = multiprocessing.get_context("spawn")
    pool = ProcessPoolExecutor(workers, mp_context=context, initializer=cv2.setNumThreads, initargs=(1,))
    try:
        yield from pool.map(_render_and_write, tasks, chunksize=8)
    finally:
        pool.shutdown(cancel_futures=True)


def _render_and_write(task: tuple[int, str, int, Path]) -> tuple[str, tuple]:
    """Render one image of a split and write its JPEG; runs in worker processes."""
    seed, split, index, root = task
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(SPLITS.index(split), index)))
    if split == "video":
        image, annotations, foreground = _render_video_frame(seed, index, rng)
    else:
        image, annotations, foreground = scene.render_image(rng, scene.load_photos(), allow_crowd=split == "train")
    file_name = f"{index:06d}.jpg"
    _write_jpeg(root / "images" / split / file_name, image)
    height, width = image.shape[:2]
    record = {"id": index + 1, "file_name": file_name, "height": height, "width": width}
    return split, (record, annotations, foreground, image if split == "video" else None)


def _write_jpeg(path: Path, image: np.ndarray) -> None:
    ok, encoded = cv2.imencode(".jpg", image[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise RuntimeError(f"JPEG encoding failed for {path}")
    path.write_bytes(encoded.tobytes())


def _render_video_frame(seed: int, frame: int, frame_rng: np.random.Generator) -> tuple[np.ndarray, list[dict], float]:
    """Frame `frame` of a fixed background with 2-4 shapes moving on smooth periodic paths."""
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(SPLITS.index("video"),)))
    width, height = VIDEO_SIZE
    background = scene.random_background(rng, scene.load_photos(), height, width)
    things = []
    for track_id in range(1, int(rng.integers(2, 5)) + 1):
        start = scene.random_shape(
            rng, int(rng.integers(len(scene.CLASS_NAMES))), (0.0, 0.0), math.exp(rng.uniform(math.log(1500), math.log(12000)))
        )
        center_x, center_y = rng.uniform(0.3, 0.7) * width, rng.uniform(0.3, 0.7) * height
        amplitude_x, amplitude_y = rng.uniform(0.1, 0.3) * width, rng.uniform(0.1, 0.3) * height
        frequency_x, frequency_y = rng.uniform(0.5, 1.5, size=2) / VIDEO_FRAMES  # cycles per frame
        phase_x, phase_y = rng.uniform(0, 2 * math.pi, size=2)
        spin = rng.uniform(-0.03, 0.03)  # radians per frame
        center = (
            center_x + amplitude_x * math.sin(2 * math.pi * frequency_x * frame + phase_x),
            center_y + amplitude_y * math.sin(2 * math.pi * frequency_y * frame + phase_y),
        )
        shape = dataclasses.replace(start, center=center, angle=start.angle + spin * frame)
        things.append(scene.Thing((shape,), track_id=track_id))
    return scene.render_scene(frame_rng, background, things)


def _write_annotation_file(root: Path, split: str, seed: int, results: list[tuple]) -> dict:
    """Write instances_<split>.json; return the split's statistics (also stored in its `info`)."""
    images, annotations, foregrounds = [], [], []
    for record, image_annotations, foreground, _ in results:
        images.append(record)
        foregrounds.append(foreground)
        for annotation in image_annotations:
            annotations.append({"id": len(annotations) + 1, "image_id": record["id"], **annotation})
    plain_areas = [annotation["area"] for annotation in annotations if not annotation["iscrowd"]]
    statistics = {
        "images": len(images),
        "instances": len(plain_areas),
        "crowd_regions": len(annotations) - len(plain_areas),
        "polygon_instances": sum(isinstance(annotation["segmentation"], list) for annotation in annotations),
        "mean_fg_ratio": round(float(np.mean(foregrounds)), 4),
        "size_buckets": _size_buckets(plain_areas),
    }
    document = {
        "info": {
            "description": f"babo-edge synthetic shapes dataset, split {split}",
            "generator_version": GENERATOR_VERSION,
            "seed": seed,
            **statistics,
        },
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": [
            {"id": index + 1, "name": name, "supercategory": "shape"} for index, name in enumerate(scene.CLASS_NAMES)
        ],
    }
    ann_file, _ = split_files(root, split)
    ann_file.write_text(json.dumps(document, separators=(",", ":")), encoding="utf-8")
    return statistics


def _size_buckets(areas: list[float]) -> dict[str, int]:
    buckets = dict.fromkeys(SIZE_BUCKETS, 0)
    for area in areas:
        buckets[next(name for name, upper in SIZE_BUCKETS.items() if area < upper)] += 1
    return buckets


def _write_video(path: Path, frames: list[np.ndarray]) -> None:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), VIDEO_FPS, VIDEO_SIZE)
    if not writer.isOpened():
        raise RuntimeError(f"opencv cannot write mp4v video {path}; its video backend is missing")
    for frame in frames:
        writer.write(np.ascontiguousarray(frame[:, :, ::-1]))
    writer.release()
    capture = cv2.VideoCapture(str(path))
    readable = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
    capture.release()
    if readable != len(frames):
        raise RuntimeError(f"video {path} reads back {readable} frames instead of {len(frames)}")


def _replace_dir(new: Path, target: Path) -> None:
    """Move `new` to `target`; an existing `target` is set aside first and removed after the swap."""
    previous = target.with_name(f".{target.name}.previous-{os.getpid()}")
    if target.exists():
        os.replace(target, previous)
    os.replace(new, target)
    shutil.rmtree(previous, ignore_errors=True)
