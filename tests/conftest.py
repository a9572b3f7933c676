"""Shared fixtures, built once per test session: the tiny built-in dataset, and the tiny BABO model
of tests/tiny.py (its calibration images, the model, its FP32 IR) with the dataset's BGR frames.

Session scope would leak a change one test makes into the next files' tests, so the teardowns check
that nothing was changed: frames are read-only, the model's tensors, the IR's files and the
ov.Models' graphs must be as built. A test that needs a changed model works on a copy."""
import hashlib

import cv2
import numpy as np
import openvino as ov
import pytest
import torch

from tiny import CHECKPOINT_NAMES, CONFIG, VIDEO_SIZE, balanced_omg, build_ir

# Denormal floats make freshly initialised CPU convolutions up to 20x slower (seen here).
torch.set_flush_denormal(True)


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory):
    """A few images of every split of the synthetic dataset (same generator as the default)."""
    from babo_edge.calibration.synthetic import generate
    root = tmp_path_factory.mktemp("data") / "tiny"
    return generate(root, seed=0, counts={"train": 12, "val": 6, "calib": 4, "video": 4},
                    progress=False, workers=1)


def read_frames(folder) -> list:
    """The images of `folder` in name order, BGR as a camera gives them, read-only (shared)."""
    frames = [cv2.imread(str(path)) for path in sorted(folder.iterdir())]
    for frame in frames:
        frame.flags.writeable = False
    return frames


@pytest.fixture(scope="session")
def calib_frames(tiny_dataset):
    """The 4 calib images of the tiny dataset as BGR frames."""
    return read_frames(tiny_dataset / "images" / "calib")


@pytest.fixture(scope="session")
def frames(calib_frames, tiny_dataset):
    """The calib then the val images (10) as BGR frames."""
    return calib_frames + read_frames(tiny_dataset / "images" / "val")


@pytest.fixture(scope="session")
def video100(tmp_path_factory, frames):
    """A 100-frame mp4v clip of the dataset's images, moving so frames differ."""
    path = tmp_path_factory.mktemp("video") / "clip.mp4"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 15, VIDEO_SIZE)
    for i in range(100):
        writer.write(np.roll(cv2.resize(frames[i % len(frames)], VIDEO_SIZE), 3 * i, axis=1))
    writer.release()
    written = hashlib.sha256(path.read_bytes()).hexdigest()
    yield path
    assert hashlib.sha256(path.read_bytes()).hexdigest() == written, "a test changed the shared video100"


@pytest.fixture(scope="session")
def calib_images(tiny_dataset):
    """The model inputs (1, 3, 128, 128) of the 4 calib images, as export/to_ir.py calibrates
    (the same arrays as runtime.detector.preprocess of `calib_frames`)."""
    from babo_edge.export.quantize import CalibrationImages
    calib = CalibrationImages(CONFIG.input_size, 4, tiny_dataset / "images" / "calib")
    return [calib[i] for i in range(len(calib))]


def snapshot(model: torch.nn.Module) -> dict:
    return {key: value.clone() for key, value in model.state_dict().items()}


@pytest.fixture(scope="session")
def tiny_model(calib_images):
    """The tiny BABO model (seed 0, untrained) with its OMG balanced on the calib images."""
    from babo_edge.models.builders import build_model
    torch.manual_seed(0)
    model = balanced_omg(build_model(CONFIG).eval(), calib_images)
    before = snapshot(model)
    yield model
    after = model.state_dict()
    assert not model.training and after.keys() == before.keys(), "a test changed the shared tiny_model"
    assert all(torch.equal(after[key], before[key]) for key in before), "a test changed the shared tiny_model"


def digest(folder) -> dict:
    return {path.relative_to(folder): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(folder.rglob("*")) if path.is_file()}


def graph(model: ov.Model) -> tuple:
    """What a test could change of an ov.Model: its ops, inputs, outputs and metadata."""
    return ([(op.get_friendly_name(), op.get_type_name()) for op in model.get_ordered_ops()],
            [str(port.get_partial_shape()) for port in model.inputs], [port.get_names() for port in model.outputs],
            str(model.get_rt_info()))


@pytest.fixture(scope="session")
def tiny_ir(tmp_path_factory, tiny_model):
    """The tiny model's FP32 IR in export/to_ir.py's layout (model.onnx, FP32/model.xml): its
    onnx_path, xml, info and the converted ov_model (in memory)."""
    folder = tmp_path_factory.mktemp("tiny_ir")
    ir = build_ir(tiny_model, folder)
    files, converted = digest(folder), graph(ir.ov_model)
    yield ir
    assert digest(folder) == files, "a test changed the files of the shared tiny IR"
    assert graph(ir.ov_model) == converted, "a test changed the shared tiny_ir.ov_model"


@pytest.fixture(scope="session")
def xml(tiny_ir):
    """The tiny model's FP32 IR: FP32/model.xml."""
    return tiny_ir.xml


@pytest.fixture(scope="session")
def ov_model(xml):
    """The tiny FP32 IR read with OpenVINO."""
    model = ov.Core().read_model(str(xml))
    read = graph(model)
    yield model
    assert graph(model) == read, "a test changed the shared ov_model"


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory, tiny_dataset):
    """The tiny model's twin with the dataset's 6 classes, balanced on its calib images and saved
    as a checkpoint, for export/to_ir.py."""
    from dataclasses import replace

    from babo_edge.calibration.coco import CocoDetection
    from babo_edge.calibration.synthetic import split_files
    from babo_edge.export.quantize import CalibrationImages
    from babo_edge.models.builders import build_model
    from babo_edge.models.checkpoint import save_checkpoint
    config = replace(CONFIG, num_classes=6)
    coco = CocoDetection(*split_files(tiny_dataset, "val"))
    calib = CalibrationImages(config.input_size, 4, tiny_dataset)
    torch.manual_seed(0)
    model = balanced_omg(build_model(config).eval(), [calib[i] for i in range(len(calib))])
    path = save_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pt", model, config, coco.class_names)
    saved = hashlib.sha256(path.read_bytes()).hexdigest()
    yield path
    assert hashlib.sha256(path.read_bytes()).hexdigest() == saved, "a test changed the shared tiny_checkpoint"


@pytest.fixture
def saved(tmp_path):
    """(model, path): the tiny model (seed 0, OMG not balanced) saved with metadata and a training
    state, class names CHECKPOINT_NAMES."""
    from babo_edge.models.builders import build_model
    from babo_edge.models.checkpoint import save_checkpoint
    torch.manual_seed(0)
    model = build_model(CONFIG).eval()
    path = save_checkpoint(tmp_path / "model.pt", model, CONFIG, CHECKPOINT_NAMES, metadata={"epochs": 3},
                           training_state={"epoch": 3, "optimizer": {"lr": torch.tensor(0.1)}})
    return model, path
