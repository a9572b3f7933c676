"""Image decoding that always yields uint8 HxWx3 RGB, whatever the file stores.

Pillow is used when installed (development machines); edge boxes carry only
opencv, so the opencv decoder is the fallback. EXIF orientation is ignored by
both: COCO annotations refer to the pixels as stored in the file.
"""
from __future__ import annotations

import functools
import os
from pathlib import Path

import cv2
import numpy as np

from babo_edge.calibration.errors import ImageReadError

BACKENDS = ("pillow", "opencv")


def read_image(path: str | os.PathLike, backend: str | None = None) -> np.ndarray:
    """Decode `path` into a uint8 HxWx3 RGB array.

    Grayscale, RGBA/LA (alpha dropped), palette, 1-bit, 16-bit and CMYK files
    are converted. `backend` forces "pillow" or "opencv"; by default Pillow is
    used if importable. Raises ImageReadError naming the file otherwise.
    """
    path = _existing_file(path)
    decode = _decode_with_pillow if _choose(backend) == "pillow" else _decode_with_opencv
    return decode(path)


def check_image(path: str | os.PathLike, backend: str | None = None) -> None:
    """Raise ImageReadError unless `path` starts like an image file of a known format.

    Reads only the header, so whole folders can be screened quickly; a file
    truncated later on still fails in read_image.
    """
    path = _existing_file(path)
    if _choose(backend) == "pillow":
        _decode_with_pillow(path, header_only=True)
    elif path.stat().st_size == 0 or not cv2.haveImageReader(str(path)):
        raise ImageReadError(f"cannot read image {str(path)!r}: not an image or unsupported format")


def _choose(backend: str | None) -> str:
    backend = backend or ("pillow" if _pillow() is not None else "opencv")
    if backend not in BACKENDS:
        raise ValueError(f"unknown image backend {backend!r}, expected one of {BACKENDS}")
    return backend


def _existing_file(path: str | os.PathLike) -> Path:
    path = Path(path)
    if not path.exists():
        reason = "broken symbolic link (missing target or link loop)" if path.is_symlink() else "file not found"
        raise ImageReadError(f"cannot read image {str(path)!r}: {reason}")
    if not path.is_file():
        raise ImageReadError(f"cannot read image {str(path)!r}: not a regular file")
    return path


@functools.cache
def _pillow():
    try:
        from PIL import Image
    except ImportError:
        return None
    return Image


def _decode_with_pillow(path: Path, header_only: bool = False) -> np.ndarray | None:
    Image = _pillow()
    if Image is None:
        raise ImportError("the 'pillow' image backend needs Pillow installed")
    try:
        with Image.open(path) as image:
            if header_only:
                return None
            image.load()
            return _pillow_to_rgb(image)
    except Image.UnidentifiedImageError:
        raise ImageReadError(f"cannot read image {str(path)!r}: not an image or unsupported format") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise ImageReadError(f"cannot read image {str(path)!r}: {error}") from None


def _pillow_to_rgb(image) -> np.ndarray:
    # Pillow's own convert() clips 16/32-bit integer pixels to 255 instead of
    # scaling them, which turns most 16-bit grayscale images white.
    if image.mode.startswith("I"):
        gray = (np.asarray(image).astype(np.int64).clip(0, 65535) >> 8).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    return np.array(image.convert("RGB"))


def _decode_with_opencv(path: Path) -> np.ndarray:
    data = np.fromfile(path, dtype=np.uint8)
    image = None
    if data.size:
        image = cv2.imdecode(data, cv2.IMREAD_COLOR_RGB | cv2.IMREAD_IGNORE_ORIENTATION)
    if image is None:
        raise ImageReadError(f"cannot read image {str(path)!r}: empty, truncated or not an image")
    return image
