"""The checkpoint format: one versioned file that rebuilds the model with nothing else.

Contents (only tensors, str, numbers, lists, dicts and None, so `torch.load(weights_only=True)`
reads it and a file that would run code is refused unread):
  format, format_version, config (ModelConfig as a dict), class_names, omg_state (or None),
  od_state, metadata (training facts: epochs, data, command, time...), training_state (optional:
  optimizer/scheduler/epoch for --resume).
"""
from __future__ import annotations

import os
import pickle
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

from babo_edge.errors import BaboError
from babo_edge.models.builders import ModelConfig, build_model
from babo_edge.files import atomic_write
from babo_edge.models.detector import BABODetector

FORMAT = "babo-edge-checkpoint"
FORMAT_VERSION = 1


class CheckpointError(BaboError, ValueError):
    """A checkpoint that cannot be used; the message is one line naming the file."""


@dataclass
class Checkpoint:
    config: ModelConfig
    class_names: list[str]
    od_state: dict[str, torch.Tensor]
    omg_state: dict[str, torch.Tensor] | None = None
    metadata: dict = field(default_factory=dict)
    training_state: dict | None = None


def save_checkpoint(path: str | os.PathLike, model: BABODetector, config: ModelConfig,
                    class_names: list[str], metadata: dict | None = None,
                    training_state: dict | None = None) -> Path:
    """Writes atomically: a temporary file in the same folder, then rename."""
    if len(class_names) != config.num_classes:
        raise ValueError(f"{len(class_names)} class names for {config.num_classes} classes")
    return _write(Path(path), {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "config": config.to_dict(),
        "class_names": list(class_names),
        "omg_state": model.omg.state_dict() if model.omg is not None else None,
        "od_state": model.detector.state_dict(),
        "metadata": dict(metadata or {}),
        "training_state": training_state,
    })


def release_checkpoint(src: str | os.PathLike, dst: str | os.PathLike, note: dict | None = None,
                       half: bool = False, overwrite: bool = False) -> Path:
    """A copy for shipping: same weights, config and metadata (plus `note`), without the
    optimizer state that only --resume needs (it triples the size with Adam). `half` stores
    float32 weights as float16 (half the file; loading casts them back to float32), for the
    zoo's size budget: evaluate the released file, not its source. An existing `dst` is
    replaced only with `overwrite` (it may be the checkpoint a user ships)."""
    if Path(dst).exists() and not overwrite:
        raise CheckpointError(f"{dst} exists; pass overwrite (--force) to replace it")
    data = _read(Path(src))
    data["training_state"] = None
    if half:
        for part in ("od_state", "omg_state"):
            if data.get(part) is not None:
                data[part] = {k: v.half() if v.dtype == torch.float32 else v for k, v in data[part].items()}
    data["metadata"] = {**(data.get("metadata") or {}), **(note or {})}
    return _write(Path(dst), data)


def _write(path: Path, payload: dict) -> Path:
    with atomic_write(path, "wb", fsync=True) as file:
        torch.save(payload, file)
    return path


def _read(path: Path) -> dict:
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    if not zipfile.is_zipfile(path):
        with open(path, "rb") as f:
            zip_start = f.read(4) == b"PK\x03\x04"
        raise CheckpointError(f"{path}: truncated checkpoint (zip archive without its directory)"
                              if zip_start else f"{path}: not a checkpoint (not a torch.save archive)")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path}: refused to load: it contains objects other than tensors and "
                              f"plain data (weights_only=True): {reason}") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError) as e:
        raise CheckpointError(f"{path}: corrupt or truncated checkpoint ({type(e).__name__}: "
                              f"{str(e).splitlines()[0] if str(e) else ''})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a babo-edge checkpoint (no '{FORMAT}' format tag; "
                              "a bare state_dict or another tool's file?)")
    version = data.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(f"{path}: unknown checkpoint format version {version!r} "
                              f"(this babo-edge reads version {FORMAT_VERSION})")
    return data


def load_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Reads and validates a checkpoint file (not the weights against a model: see load_model)."""
    path = Path(path)
    data = _read(path)
    try:
        config = ModelConfig.from_dict(data["config"])
        return Checkpoint(config=config, class_names=list(data["class_names"]),
                          od_state=data["od_state"], omg_state=data.get("omg_state"),
                          metadata=dict(data.get("metadata") or {}),
                          training_state=data.get("training_state"))
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: invalid checkpoint contents: {e}") from None


def load_weights(path: str | os.PathLike, part: str, module: torch.nn.Module, state: dict | None) -> None:
    """Loads `state` into `module` (its `part` of the checkpoint at `path`); every mismatch,
    a missing part included, is a one-line CheckpointError instead of torch's traceback."""
    if state is None:
        raise CheckpointError(f"{path}: the checkpoint holds no {part} weights")
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        def show(keys):
            return ", ".join(keys[:3]) + (f" (+{len(keys) - 3} more)" if len(keys) > 3 else "")
        problems = ([f"missing keys {show(missing)}"] if missing else []) + \
                   ([f"unexpected keys {show(unexpected)}"] if unexpected else [])
        raise CheckpointError(f"{path}: {part} weights do not match the architecture: {'; '.join(problems)}")
    for key, value in state.items():
        if tuple(value.shape) != tuple(expected[key].shape):
            raise CheckpointError(f"{path}: {part} tensor '{key}' has shape {tuple(value.shape)}, "
                                  f"the architecture expects {tuple(expected[key].shape)}")
    module.load_state_dict(state)


def load_model(path: str | os.PathLike) -> tuple[BABODetector, Checkpoint]:
    """Checkpoint -> (model in eval mode, checkpoint). Every mismatch is a one-line CheckpointError."""
    path = Path(path)
    ckpt = load_checkpoint(path)
    model = build_model(ckpt.config)
    if len(ckpt.class_names) != ckpt.config.num_classes:
        raise CheckpointError(f"{path}: {len(ckpt.class_names)} class names for "
                              f"{ckpt.config.num_classes} classes")
    load_weights(path, "detector", model.detector, ckpt.od_state)
    if model.omg is not None:
        if ckpt.omg_state is None:
            raise CheckpointError(f"{path}: the config has an OMG but the checkpoint holds no OMG weights")
        load_weights(path, "OMG", model.omg, ckpt.omg_state)
    elif ckpt.omg_state is not None:
        raise CheckpointError(f"{path}: OMG weights present but the config has no OMG")
    return model.eval(), ckpt
