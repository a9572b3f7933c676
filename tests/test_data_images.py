"""read_image / check_image on every pixel format we promise, ImageFolder, and import hygiene."""
import subprocess
import sys
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from babo_edge.calibration.errors import DatasetError, ImageReadError
from babo_edge.calibration.folder import ImageFolder
from babo_edge.calibration.images import check_image, read_image

REPO_ROOT = Path(__file__).resolve().parent.parent
BACKENDS = ["pillow", "opencv"]
COLORS = np.array([[200, 30, 40], [20, 180, 60], [30, 60, 220]], dtype=np.uint8)


def stripes_rgb() -> np.ndarray:
    """32x48 image with three vertical colour bands (16 px each)."""
    return np.repeat(np.repeat(COLORS[None], 32, axis=0), 16, axis=1)


def band_colors(image: np.ndarray) -> np.ndarray:
    return image[16, [8, 24, 40]].astype(int)


def assert_rgb_uint8(image: np.ndarray, height: int, width: int) -> None:
    assert image.dtype == np.uint8
    assert image.shape == (height, width, 3)


@pytest.fixture
def files(tmp_path) -> dict[str, Path]:
    rgb = stripes_rgb()
    made = {name: tmp_path / name for name in
            ["rgb.png", "gray.png", "rgba.png", "palette.png", "gray16.png", "rgb16.png", "cmyk.jpg", "bilevel.png"]}
    Image.fromarray(rgb).save(made["rgb.png"])
    Image.fromarray(rgb[:, :, 0]).save(made["gray.png"])
    Image.fromarray(np.dstack([rgb, np.full(rgb.shape[:2], 90, np.uint8)])).save(made["rgba.png"])
    Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=4).save(made["palette.png"])
    gray16 = np.tile(np.array([0, 256, 61400, 65535], dtype=np.uint16), (32, 12))
    cv2.imwrite(str(made["gray16.png"]), gray16)
    cv2.imwrite(str(made["rgb16.png"]), (rgb[:, :, ::-1].astype(np.uint16) * 257))
    Image.fromarray(rgb).convert("CMYK").save(made["cmyk.jpg"], quality=95)
    Image.fromarray(rgb[:, :, 1] > 100).save(made["bilevel.png"])
    return made


@pytest.mark.parametrize("backend", BACKENDS)
def test_color_formats_decode_to_the_same_rgb(files, backend):
    for name in ["rgb.png", "rgba.png", "palette.png", "rgb16.png"]:
        image = read_image(files[name], backend=backend)
        assert_rgb_uint8(image, 32, 48)
        np.testing.assert_array_equal(band_colors(image), COLORS, err_msg=name)


@pytest.mark.parametrize("backend", BACKENDS)
def test_cmyk_jpeg_is_converted_to_rgb(files, backend):
    assert Image.open(files["cmyk.jpg"]).mode == "CMYK"
    image = read_image(files["cmyk.jpg"], backend=backend)
    assert_rgb_uint8(image, 32, 48)
    assert np.abs(band_colors(image) - COLORS).max() <= 6


@pytest.mark.parametrize("backend", BACKENDS)
def test_grayscale_formats_become_three_equal_channels(files, backend):
    gray = read_image(files["gray.png"], backend=backend)
    np.testing.assert_array_equal(band_colors(gray), np.repeat(COLORS[:, :1], 3, axis=1))
    bilevel = read_image(files["bilevel.png"], backend=backend)
    np.testing.assert_array_equal(band_colors(bilevel), [[0, 0, 0], [255, 255, 255], [0, 0, 0]])


@pytest.mark.parametrize("backend", BACKENDS)
def test_16_bit_grayscale_is_scaled_not_clipped(files, backend):
    image = read_image(files["gray16.png"], backend=backend)
    assert_rgb_uint8(image, 32, 48)
    np.testing.assert_array_equal(image[0, :4, 0], [0, 1, 239, 255])
    np.testing.assert_array_equal(image[..., 0], image[..., 2])


@pytest.mark.parametrize("backend", BACKENDS)
def test_unreadable_files_raise_one_line_error_naming_the_file(tmp_path, backend):
    text = tmp_path / "notes.jpg"
    text.write_text("not an image")
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    ok, jpeg = cv2.imencode(".jpg", np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(jpeg.tobytes()[: jpeg.size // 2])
    cases = {
        tmp_path / "missing.png": "file not found",
        tmp_path: "not a regular file",
        text: "not an image",
        empty: "",
        truncated: "",
    }
    for path, reason in cases.items():
        with pytest.raises(ImageReadError) as error:
            read_image(path, backend=backend)
        message = str(error.value)
        assert isinstance(error.value, ValueError)
        assert str(path) in message and reason in message and "\n" not in message


@pytest.mark.parametrize("backend", BACKENDS)
def test_check_image_reads_headers_only(files, tmp_path, backend):
    check_image(files["cmyk.jpg"], backend=backend)
    text = tmp_path / "fake.png"
    text.write_text("hello")
    with pytest.raises(ImageReadError, match="fake.png"):
        check_image(text, backend=backend)


def test_unknown_backend_is_rejected(files):
    with pytest.raises(ValueError, match="unknown image backend"):
        read_image(files["rgb.png"], backend="imageio")


def test_image_folder_lists_sorted_images_and_skips_broken_ones(tmp_path, files):
    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    for name in ["b.PNG", "a.jpg", "sub/c.webp"]:
        Image.fromarray(stripes_rgb()).save(folder / name, format="WEBP" if name.endswith("webp") else None)
    (folder / "broken.png").write_text("oops")
    (folder / "readme.txt").write_text("not listed")

    with pytest.warns(UserWarning, match="broken.png"):
        flat = ImageFolder(folder)
    assert [name for name, _ in flat] == ["a.jpg", "b.PNG"]
    assert flat.skipped == [("broken.png", flat.skipped[0][1])] and "not an image" in flat.skipped[0][1]
    name, image = flat[1]
    assert name == "b.PNG"
    np.testing.assert_array_equal(band_colors(image), COLORS)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        nested = ImageFolder(folder, recursive=True)
    assert len(nested) == 3 and nested[2][0] == "sub/c.webp"
    assert nested[2][1].shape == (32, 48, 3)


def test_image_folder_errors(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        ImageFolder(tmp_path / "nowhere")
    (tmp_path / "notes.txt").write_text("no images here")
    with pytest.raises(DatasetError, match="contains no readable images") as error:
        ImageFolder(tmp_path)
    assert str(tmp_path) in str(error.value) and "\n" not in str(error.value)
    (tmp_path / "fake.jpg").write_text("still no images")
    with pytest.warns(UserWarning), pytest.raises(DatasetError, match="contains no readable images"):
        ImageFolder(tmp_path)


def test_package_import_is_light_and_never_imports_torch():
    code = (
        "import sys, babo_edge.calibration\n"
        "assert 'cv2' not in sys.modules and 'pycocotools' not in sys.modules\n"
        "from babo_edge.calibration import CocoDetection, ImageFolder, read_image, generate, instance_mask\n"
        "import babo_edge.calibration.make_dataset\n"
        "assert 'cv2' in sys.modules and 'torch' not in sys.modules and 'skimage' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd="/", check=True)  # the installed package, not the checkout
