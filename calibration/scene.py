"""Random scenes for the synthetic dataset: textured shapes pasted over photo backgrounds.

Everything here is a pure function of a numpy Generator, so a scene is
reproducible from its seed alone. Annotations are derived from the pixels
that stay visible after occlusion, encoded the way COCO does (polygons,
compressed RLE, uncompressed RLE for crowd regions).
"""
from __future__ import annotations

import colorsys
import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
from pycocotools import mask as mask_utils

from babo_edge.calibration.coco import segmentation_to_mask

CLASS_NAMES = ("disc", "square", "triangle", "star", "ring", "cross")

# Photos that ship inside the scikit-image wheel (no download needed).
PHOTO_NAMES = (
    "astronaut", "brick", "camera", "chelsea", "clock", "coffee", "coins",
    "grass", "gravel", "hubble_deep_field", "immunohistochemistry", "moon", "retina", "rocket",
)

IMAGE_SIDE_RANGE = (320, 448)
MAX_OBJECTS = 8
EMPTY_IMAGE_PROBABILITY = 0.05
CROWD_IMAGE_PROBABILITY = 0.04
MIN_OBJECT_AREA = 64.0  # pixels
MAX_OBJECT_AREA_FRACTION = 0.75  # of the image; log-uniform areas up to it give COCO-like size buckets and FG-ratio
MIN_VISIBLE_FRACTION = 0.2
MIN_VISIBLE_PIXELS = 12
RLE_PROBABILITY = 0.08  # share of plain objects stored as compressed RLE anyway
POLYGON_UPSAMPLING = 2  # contours traced at half-pixel resolution reproduce the mask exactly
POLYGON_TOLERANCE = 0.3  # pixels


@dataclass(frozen=True)
class Shape:
    """One drawn shape: geometry plus a texture fixed in the shape's own frame (so it moves with it)."""

    class_index: int
    center: tuple[float, float]
    area: float
    aspect: float
    angle: float  # radians
    colors: tuple[tuple[float, float, float], tuple[float, float, float]]
    pattern: str  # "flat", "stripes" or "checker"
    period: float  # pixels, for stripes and checker
    pattern_angle: float
    shading: float  # brightness change across the shape


@dataclass(frozen=True)
class Thing:
    """One annotation: a single shape, or for a crowd region many small shapes of one class."""

    parts: tuple[Shape, ...]
    iscrowd: bool = False
    track_id: int | None = None  # identity of a moving object across video frames

    @property
    def class_index(self) -> int:
        return self.parts[0].class_index


def render_image(rng: np.random.Generator, photos: Sequence[np.ndarray],
                 allow_crowd: bool) -> tuple[np.ndarray, list[dict], float]:
    """Random scene -> (RGB image, COCO annotations without ids, fraction of annotated pixels)."""
    height, width = (int(side) for side in rng.integers(IMAGE_SIDE_RANGE[0], IMAGE_SIDE_RANGE[1] + 1, size=2))
    background = random_background(rng, photos, height, width)
    things = random_things(rng, height, width, allow_crowd)
    return render_scene(rng, background, things)


def render_scene(rng: np.random.Generator, background: np.ndarray, things: list[Thing]) -> tuple[np.ndarray, list[dict], float]:
    """Paint `things` bottom to top over `background`, add camera noise and annotate what stays visible."""
    height, width = background.shape[:2]
    part_masks = [[_rasterize(shape, height, width) for shape in thing.parts] for thing in things]
    visible_masks = _visible_masks(things, part_masks)
    image = background.copy()
    for thing, masks, visible in zip(things, part_masks, visible_masks):
        if visible is not None:
            for shape, mask in zip(thing.parts, masks):
                _paint(image, shape, mask)
    image = _camera_noise(rng, image)
    annotations = []
    foreground = np.zeros((height, width), dtype=bool)
    for thing, visible in zip(things, visible_masks):
        if visible is not None:
            annotation, stored_mask = _annotate(thing, visible, as_rle=rng.random() < RLE_PROBABILITY)
            annotations.append(annotation)
            foreground |= stored_mask
    return image, annotations, float(foreground.mean())


def random_things(rng: np.random.Generator, height: int, width: int, allow_crowd: bool) -> list[Thing]:
    """Objects in paint order; count uniform in 1..MAX_OBJECTS, a few images empty, some with a crowd region."""
    things = []
    if allow_crowd and rng.random() < CROWD_IMAGE_PROBABILITY:
        things.append(_random_crowd(rng, height, width))
    count = 0 if rng.random() < EMPTY_IMAGE_PROBABILITY else int(rng.integers(1, MAX_OBJECTS + 1))
    # big objects first, like a scene's larger things behind smaller ones, so few vanish under others
    log_areas = rng.uniform(math.log(MIN_OBJECT_AREA), math.log(MAX_OBJECT_AREA_FRACTION * height * width), size=count)
    areas = sorted(np.exp(log_areas), reverse=True)
    for area in areas:
        center = (rng.uniform(0.1, 0.9) * width, rng.uniform(0.1, 0.9) * height)
        things.append(Thing((random_shape(rng, int(rng.integers(len(CLASS_NAMES))), center, float(area)),)))
    return things


def random_shape(rng: np.random.Generator, class_index: int, center: tuple[float, float], area: float) -> Shape:
    """A shape of the given class, size and place with random aspect ratio, rotation, colours and texture."""
    return Shape(
        class_index=class_index,
        center=center,
        area=area,
        aspect=math.exp(rng.uniform(math.log(0.5), math.log(2.0))),
        angle=rng.uniform(0, 2 * math.pi),
        colors=(_random_color(rng), _random_color(rng)),
        pattern=str(rng.choice(["flat", "stripes", "checker"], p=[0.5, 0.3, 0.2])),
        period=rng.uniform(3, 14),
        pattern_angle=rng.uniform(0, math.pi),
        shading=rng.uniform(-0.5, 0.5),
    )


def random_background(rng: np.random.Generator, photos: Sequence[np.ndarray], height: int, width: int) -> np.ndarray:
    """A jittered crop of a photo, sometimes two crops side by side or stacked."""
    if rng.random() < 0.25:
        if rng.random() < 0.5:
            split = int(rng.integers(width // 4, 3 * width // 4))
            background = np.hstack([_photo_crop(rng, photos, height, split), _photo_crop(rng, photos, height, width - split)])
        else:
            split = int(rng.integers(height // 4, 3 * height // 4))
            background = np.vstack([_photo_crop(rng, photos, split, width), _photo_crop(rng, photos, height - split, width)])
    else:
        background = _photo_crop(rng, photos, height, width)
    return _color_jitter(rng, background)


@functools.cache
def load_photos() -> tuple[np.ndarray, ...]:
    """RGB background photos bundled with scikit-image; empty if none can be loaded offline."""
    try:
        import skimage.data
    except ImportError:
        return ()
    photos = []
    for name in PHOTO_NAMES:
        try:
            photo = getattr(skimage.data, name)()
        except Exception:  # a scikit-image build without this file tries a download and fails in many ways
            continue
        photos.append(photo if photo.ndim == 3 else np.repeat(photo[:, :, None], 3, axis=2))
    return tuple(np.ascontiguousarray(photo[:, :, :3], dtype=np.uint8) for photo in photos)


def mask_to_polygons(mask: np.ndarray) -> list[list[float]]:
    """Outer contours of a 0/1 mask as COCO polygons, traced on a 2x grid so they rasterize back to the mask."""
    x, y, w, h = cv2.boundingRect(mask.astype(np.uint8))
    crop = np.pad(mask[y : y + h, x : x + w].astype(np.uint8), 1)  # contours must not touch the border
    upsampled = cv2.resize(crop, None, fx=POLYGON_UPSAMPLING, fy=POLYGON_UPSAMPLING, interpolation=cv2.INTER_NEAREST)
    contours, _ = cv2.findContours(upsampled, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    polygons = []
    for contour in contours:
        points = cv2.approxPolyDP(contour, POLYGON_TOLERANCE * POLYGON_UPSAMPLING, True).reshape(-1, 2)
        if len(points) >= 3:
            points = (points + 0.5) / POLYGON_UPSAMPLING + (x - 1, y - 1)
            polygons.append([round(float(value), 2) for value in points.ravel()])
    return polygons


def uncompressed_rle(mask: np.ndarray) -> dict:
    """COCO's uncompressed RLE (column-major run lengths starting with a background run), used for crowds."""
    flat = mask.ravel(order="F").astype(np.int8)
    run_starts = np.flatnonzero(np.diff(flat)) + 1
    counts = np.diff(np.concatenate([[0], run_starts, [flat.size]])).tolist()
    if flat.size and flat[0]:
        counts.insert(0, 0)
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": counts}


def _random_crowd(rng: np.random.Generator, height: int, width: int) -> Thing:
    class_index = int(rng.integers(len(CLASS_NAMES)))
    cluster_center = np.array([rng.uniform(0.2, 0.8) * width, rng.uniform(0.2, 0.8) * height])
    cluster_radius = rng.uniform(0.08, 0.2) * min(height, width)
    parts = []
    for _ in range(int(rng.integers(8, 21))):
        offset = rng.normal(0, cluster_radius / 2, size=2)
        parts.append(random_shape(rng, class_index, tuple(cluster_center + offset), rng.uniform(40, 250)))
    return Thing(tuple(parts), iscrowd=True)


def _visible_masks(things: list[Thing], part_masks: list[list[np.ndarray]]) -> list[np.ndarray | None]:
    """Visible pixels of each thing, None for things too hidden or cut off to keep (they are not painted at all)."""
    covered = np.zeros_like(part_masks[0][0]) if things else None
    visible_masks = []
    for thing, masks in zip(reversed(things), reversed(part_masks)):
        full = np.logical_or.reduce(masks)
        visible = full & ~covered
        if visible.sum() < max(MIN_VISIBLE_PIXELS, MIN_VISIBLE_FRACTION * sum(shape.area for shape in thing.parts)):
            visible_masks.append(None)
        else:
            covered |= full
            visible_masks.append(visible)
    return visible_masks[::-1]


def _annotate(thing: Thing, visible: np.ndarray, as_rle: bool) -> tuple[dict, np.ndarray]:
    """COCO annotation of the visible pixels, and the mask a COCO reader will decode from it."""
    height, width = visible.shape
    compressed = mask_utils.encode(np.asfortranarray(visible.astype(np.uint8)))
    stored_mask = visible
    if thing.iscrowd:
        segmentation = uncompressed_rle(visible)
    else:
        segmentation = {"size": [height, width], "counts": compressed["counts"].decode("ascii")}
        polygons = [] if as_rle else mask_to_polygons(visible)
        if polygons:
            rasterized = segmentation_to_mask(polygons, height, width).astype(bool)
            # masks with holes (rings, shapes pierced by an occluder) cannot be polygons
            if (rasterized ^ visible).sum() <= 0.01 * visible.sum():
                segmentation, stored_mask = polygons, rasterized
                compressed = mask_utils.encode(np.asfortranarray(rasterized.astype(np.uint8)))
    annotation = {
        "category_id": thing.class_index + 1,
        "segmentation": segmentation,
        "area": float(mask_utils.area(compressed)),
        "bbox": [float(value) for value in mask_utils.toBbox(compressed)],
        "iscrowd": int(thing.iscrowd),
    }
    if thing.track_id is not None:
        annotation["track_id"] = thing.track_id
    return annotation, stored_mask


@functools.cache
def _unit_outlines(class_index: int) -> tuple[tuple[np.ndarray, bool], ...]:
    """(polygon, filled) pairs of a class outline centred at 0 with area 1; unfilled polygons are holes."""

    def regular(corners: int, radius: float = 1.0, phase: float = 0.0) -> np.ndarray:
        angles = phase + 2 * np.pi * np.arange(corners) / corners
        return radius * np.stack([np.cos(angles), np.sin(angles)], axis=1)

    name = CLASS_NAMES[class_index]
    if name == "disc":
        outlines = [(regular(64), True)]
    elif name == "square":
        outlines = [(regular(4, phase=np.pi / 4), True)]
    elif name == "triangle":
        outlines = [(regular(3, phase=-np.pi / 2), True)]
    elif name == "star":
        star = regular(10, phase=-np.pi / 2)
        star[1::2] *= 0.45
        outlines = [(star, True)]
    elif name == "ring":
        outlines = [(regular(64), True), (regular(64, radius=0.55), False)]
    else:  # cross
        arm, end = 0.3, 1.0
        outlines = [(np.array([
            [-arm, -end], [arm, -end], [arm, -arm], [end, -arm], [end, arm], [arm, arm],
            [arm, end], [-arm, end], [-arm, arm], [-end, arm], [-end, -arm], [-arm, -arm],
        ]), True)]
    area = sum((1 if filled else -1) * abs(_polygon_area(polygon)) for polygon, filled in outlines)
    return tuple((polygon / math.sqrt(area), filled) for polygon, filled in outlines)


def _polygon_area(polygon: np.ndarray) -> float:
    x, y = polygon[:, 0], polygon[:, 1]
    return 0.5 * float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))


def _rasterize(shape: Shape, height: int, width: int) -> np.ndarray:
    """Pixels of the shape, rasterized like COCO polygons (pixel i spans [i, i+1)) so areas come out right."""
    mask = np.zeros((height, width), dtype=bool)
    stretch = np.array([math.sqrt(shape.aspect), 1 / math.sqrt(shape.aspect)]) * math.sqrt(shape.area)
    cos, sin = math.cos(shape.angle), math.sin(shape.angle)
    rotation = np.array([[cos, sin], [-sin, cos]])
    for polygon, filled in _unit_outlines(shape.class_index):
        points = (polygon * stretch) @ rotation + shape.center
        region = segmentation_to_mask([points.ravel().tolist()], height, width).astype(bool)
        mask = mask | region if filled else mask & ~region
    return mask


def _paint(image: np.ndarray, shape: Shape, mask: np.ndarray) -> None:
    x, y, w, h = cv2.boundingRect(mask.astype(np.uint8))
    if w == 0:
        return
    rows, columns = np.mgrid[y : y + h, x : x + w].astype(np.float32)
    dx, dy = columns - shape.center[0], rows - shape.center[1]
    cos, sin = math.cos(shape.angle), math.sin(shape.angle)
    u, v = dx * cos + dy * sin, -dx * sin + dy * cos  # coordinates in the shape's own frame
    along = u * math.cos(shape.pattern_angle) + v * math.sin(shape.pattern_angle)
    if shape.pattern == "stripes":
        second_color = np.sin(2 * np.pi * along / shape.period) > 0
    elif shape.pattern == "checker":
        second_color = (np.floor(u / shape.period) + np.floor(v / shape.period)) % 2 == 1
    else:
        second_color = np.zeros_like(u, dtype=bool)
    colors = np.array(shape.colors, dtype=np.float32)
    layer = np.where(second_color[..., None], colors[1], colors[0])
    layer *= 1 + shape.shading * (along / math.sqrt(shape.area))[..., None]
    region = image[y : y + h, x : x + w]
    inside = mask[y : y + h, x : x + w]
    region[inside] = np.clip(layer[inside], 0, 255).astype(np.uint8)


def _random_color(rng: np.random.Generator) -> tuple[float, float, float]:
    red, green, blue = colorsys.hsv_to_rgb(rng.uniform(0, 1), rng.uniform(0.3, 1), rng.uniform(0.35, 1))
    return (255 * red, 255 * green, 255 * blue)


def _photo_crop(rng: np.random.Generator, photos: Sequence[np.ndarray], height: int, width: int) -> np.ndarray:
    if not photos:
        return _procedural_background(rng, height, width)
    photo = photos[int(rng.integers(len(photos)))]
    photo_height, photo_width = photo.shape[:2]
    aspect = width / height * math.exp(rng.uniform(-0.2, 0.2))
    scale = rng.uniform(0.3, 1.0)
    crop_width = max(int(min(photo_width, photo_height * aspect) * scale), 8)
    crop_height = max(int(min(photo_height, photo_width / aspect) * scale), 8)
    left = int(rng.integers(photo_width - crop_width + 1))
    top = int(rng.integers(photo_height - crop_height + 1))
    crop = photo[top : top + crop_height, left : left + crop_width]
    interpolation = cv2.INTER_AREA if crop_width > width else cv2.INTER_LINEAR
    crop = cv2.resize(crop, (width, height), interpolation=interpolation)
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    if rng.random() < 0.1:
        crop = crop[::-1]
    return np.ascontiguousarray(crop)


def _procedural_background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Smooth colour blobs, used only when no photo is available."""
    coarse = rng.uniform(0, 255, size=(int(rng.integers(2, 8)), int(rng.integers(2, 8)), 3)).astype(np.float32)
    smooth = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)
    return np.clip(smooth + rng.normal(0, 8, size=smooth.shape), 0, 255).astype(np.uint8)


def _color_jitter(rng: np.random.Generator, image: np.ndarray) -> np.ndarray:
    hsv = cv2.cvtColor(image, cv2.COLOR_RGB2HSV)
    hsv[..., 0] = (hsv[..., 0].astype(np.int32) + int(rng.integers(-10, 11))) % 180
    image = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB).astype(np.float32)
    gray = image.mean(axis=2, keepdims=True)
    image = gray + (image - gray) * rng.uniform(0.6, 1.4)
    mean = float(image.mean())
    image = (image - mean) * rng.uniform(0.7, 1.3) + mean * rng.uniform(0.75, 1.25)
    return np.clip(image, 0, 255).astype(np.uint8)


def _camera_noise(rng: np.random.Generator, image: np.ndarray) -> np.ndarray:
    if rng.random() < 0.3:
        image = cv2.GaussianBlur(image, (3, 3), rng.uniform(0.3, 0.8))
    noise = rng.standard_normal(image.shape, dtype=np.float32) * rng.uniform(0, 4)
    return np.clip(image + noise, 0, 255).astype(np.uint8)
