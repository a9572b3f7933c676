"""Checkpoint round trip and one clear error per kind of bad checkpoint."""
import os
import pickle

import pytest
import torch

from babo_edge.models.builders import ModelConfig, build_model
from babo_edge.models.checkpoint import CheckpointError, load_checkpoint, load_model, save_checkpoint
from babo_edge.models.cli import write_json
from tiny import CHECKPOINT_NAMES as NAMES, CONFIG

def test_round_trip_restores_config_names_and_outputs(saved):
    model, path = saved
    loaded, ckpt = load_model(path)
    assert ckpt.config == CONFIG and ckpt.class_names == NAMES and ckpt.metadata == {"epochs": 3}
    assert ckpt.training_state["epoch"] == 3
    images = torch.rand(1, 3, 128, 128) * 255
    with torch.no_grad():
        a, b = model(images), loaded(images)
    assert torch.equal(a.cls_logits, b.cls_logits) and torch.equal(a.mask, b.mask)
    assert not loaded.training
    assert [p.name for p in path.parent.iterdir()] == ["model.pt"]  # no temporary file left


def test_vanilla_round_trip(tmp_path):
    config = ModelConfig(num_classes=3, input_size=(96, 96), omg=False, omg_size=None)
    path = save_checkpoint(tmp_path / "v.pt", build_model(config), config, NAMES)
    model, ckpt = load_model(path)
    assert model.omg is None and ckpt.omg_state is None


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match=r"missing\.pt: no such checkpoint file"):
        load_model(tmp_path / "missing.pt")


def test_not_a_checkpoint(tmp_path):
    path = tmp_path / "notes.pt"
    path.write_text("hello")
    with pytest.raises(CheckpointError, match="not a checkpoint"):
        load_model(path)


def test_bare_state_dict_is_not_a_checkpoint(tmp_path):
    path = tmp_path / "sd.pt"
    torch.save(build_model(CONFIG).state_dict(), path)
    with pytest.raises(CheckpointError, match="not a babo-edge checkpoint"):
        load_model(path)


def test_truncated_file(saved):
    _, path = saved
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        load_model(path)


def test_unknown_format_version(saved, tmp_path):
    _, path = saved
    data = torch.load(path, weights_only=True)
    data["format_version"] = 99
    torch.save(data, tmp_path / "v99.pt")
    with pytest.raises(CheckpointError, match="unknown checkpoint format version 99"):
        load_checkpoint(tmp_path / "v99.pt")


def edited(path, tmp_path, edit):
    data = torch.load(path, weights_only=True)
    edit(data)
    out = tmp_path / "edited.pt"
    torch.save(data, out)
    return out


def test_missing_and_unexpected_keys(saved, tmp_path):
    _, path = saved
    bad = edited(path, tmp_path, lambda d: d["od_state"].pop("head.cls.0.1.weight"))
    with pytest.raises(CheckpointError, match=r"detector weights .*missing keys head\.cls\.0\.1\.weight"):
        load_model(bad)
    bad = edited(path, tmp_path, lambda d: d["omg_state"].update(extra=torch.zeros(1)))
    with pytest.raises(CheckpointError, match="OMG weights .*unexpected keys extra"):
        load_model(bad)


def test_shape_mismatch_names_the_tensor(saved, tmp_path):
    _, path = saved
    bad = edited(path, tmp_path, lambda d: d["od_state"].update({"head.box.0.1.bias": torch.zeros(5)}))
    with pytest.raises(CheckpointError, match=r"tensor 'head\.box\.0\.1\.bias' has shape \(5,\)"):
        load_model(bad)


def test_config_class_count_mismatch(saved, tmp_path):
    _, path = saved
    bad = edited(path, tmp_path, lambda d: d["class_names"].append("extra"))
    with pytest.raises(CheckpointError, match="4 class names for 3 classes"):
        load_model(bad)


class RunsCode:
    """A pickle payload that would create a file if it were ever unpickled with full pickle."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickle_that_would_run_code_is_refused_unrun(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"format": "babo-edge-checkpoint", "format_version": 1, "payload": RunsCode(marker)},
               path, pickle_module=pickle)
    with pytest.raises(CheckpointError, match="refused to load"):
        load_model(path)
    assert not marker.exists()


def test_save_failure_leaves_nothing(tmp_path, monkeypatch):
    model = build_model(CONFIG)

    def explode(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", explode)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(tmp_path / "m.pt", model, CONFIG, NAMES)
    assert list(tmp_path.iterdir()) == []


def test_release_drops_the_optimizer_state_only(saved, tmp_path):
    _, path = saved
    out = tmp_path / "release" / "model.pt"
    from babo_edge.models.checkpoint import release_checkpoint
    release_checkpoint(path, out, note={"released": "test"})
    original, shipped = load_checkpoint(path), load_checkpoint(out)
    assert shipped.training_state is None and original.training_state is not None
    assert shipped.metadata == {"epochs": 3, "released": "test"}
    assert all(torch.equal(v, shipped.od_state[k]) for k, v in original.od_state.items())
    load_model(out)


def test_release_never_replaces_an_existing_file_unless_asked(saved, tmp_path):
    _, path = saved
    from babo_edge.models.checkpoint import CheckpointError, release_checkpoint
    out = tmp_path / "shipped.pt"
    out.write_bytes(b"the user's own model")
    with pytest.raises(CheckpointError, match="exists"):
        release_checkpoint(path, out)
    assert out.read_bytes() == b"the user's own model"
    release_checkpoint(path, out, overwrite=True)
    load_model(out)


def test_half_release_stores_float16_and_loads_as_float32(saved, tmp_path):
    _, path = saved
    from babo_edge.models.checkpoint import release_checkpoint
    out = release_checkpoint(path, tmp_path / "half.pt", half=True)
    original, shipped = load_checkpoint(path), load_checkpoint(out)
    for key, value in original.od_state.items():
        expected = value.half() if value.dtype == torch.float32 else value
        assert shipped.od_state[key].dtype == expected.dtype and torch.equal(shipped.od_state[key], expected)
    model, _ = load_model(out)
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_atomic_writes_are_readable_like_ordinary_files(saved, tmp_path):
    """mkstemp makes 0600 files; a checkpoint or report is published with open()'s permissions."""
    umask = os.umask(0o022)
    try:
        report = tmp_path / "report.json"
        write_json(report, {"a": 1})
        checkpoint = save_checkpoint(tmp_path / "again.pt", saved[0], CONFIG, NAMES)
    finally:
        os.umask(umask)
    assert report.stat().st_mode & 0o777 == checkpoint.stat().st_mode & 0o777 == 0o644
