"""A folder of images without annotations: INT8 calibration photos, demo inputs."""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np

from babo_edge.calibration.errors import DatasetError, ImageReadError
from babo_edge.calibration.images import check_image, read_image

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


class ImageFolder:
    """Image files of `path` (and its subfolders if `recursive`), sorted by relative path.

    `dataset[i]` is `(file_name, image)` with `file_name` relative to `path` and
    `image` uint8 HxWx3 RGB. Files whose header is not an image, and broken or
    looping symbolic links with an image extension, are skipped with a warning
    and listed in `skipped` as `(file_name, reason)`; files without an image
    extension are not listed. Symbolic links to images are read; symbolically
    linked subfolders are not followed (no link loops when `recursive`).
    """

    def __init__(self, path: str | os.PathLike, recursive: bool = False):
        self.root = Path(path)
        if not self.root.is_dir():
            raise DatasetError(f"image folder {str(self.root)!r} does not exist or is not a folder")
        try:
            candidates = sorted(
                file
                for file in (self.root.rglob("*") if recursive else self.root.iterdir())
                if file.suffix.lower() in IMAGE_EXTENSIONS and (file.is_file() or file.is_symlink())
            )
        except OSError as error:
            raise DatasetError(f"image folder {str(self.root)!r} cannot be read: {error.strerror or error}") from None
        self.files: list[Path] = []
        self.skipped: list[tuple[str, str]] = []
        for file in candidates:
            try:
                check_image(file)
            except ImageReadError as error:
                self.skipped.append((self._name(file), str(error)))
                warnings.warn(f"{error}; skipped", stacklevel=2)
            else:
                self.files.append(file)
        if not self.files:
            raise DatasetError(
                f"image folder {str(self.root)!r} contains no readable images "
                f"({', '.join(IMAGE_EXTENSIONS)}{', searched recursively' if recursive else ''})"
            )

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[str, np.ndarray]:
        file = self.files[index]
        return self._name(file), read_image(file)

    def _name(self, file: Path) -> str:
        return file.relative_to(self.root).as_posix()
