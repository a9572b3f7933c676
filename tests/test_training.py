"""Training: every mode lowers its loss on a fixed batch, resume is exact, 2-process DDP runs."""
import os
import socket
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from babo_edge.calibration.coco import CocoDetection
from babo_edge.calibration.synthetic import split_files
from babo_edge.models.builders import ModelConfig
from babo_edge.models.checkpoint import load_checkpoint
from babo_edge.train.data import DetectionData, collate
from babo_edge.models.checkpoint import save_checkpoint
from babo_edge.train.engine import (TrainConfig, compute_losses, lr_at, make_optimizer, omg_loss_config, prepare_model,
                          set_train_mode, train, train_step)
from babo_edge.train.losses import OMGLossConfig

ROOT = Path(__file__).resolve().parents[1]


def config_for(mode, tiny_dataset, tmp_path, **kw):
    omg = mode in ("omg", "e2e") or kw.get("mask_source") == "omg"
    model = ModelConfig(num_classes=6, input_size=(128, 128), width=0.5, omg=omg,
                        omg_size=(64, 64) if omg else None)
    return TrainConfig(mode=mode, model=model, data=str(tiny_dataset), epochs=2, batch_size=4,
                       optimizer="adam", lr=1e-3, warmup_iters=0, workers=0, out=str(tmp_path / mode),
                       omg_loss=OMGLossConfig(dilation=5, negatives_per_positive=3.0, positive_weight=3.0),
                       **kw)


@pytest.mark.parametrize("mode, extra", [("omg", {}), ("vanilla", {}), ("e2e", {}),
                                         ("pipeline", {"mask_source": "gt-box"}),
                                         ("pipeline", {"mask_source": "random:0.5"})])
def test_two_steps_lower_the_loss_on_a_fixed_batch(mode, extra, tiny_dataset, tmp_path):
    torch.manual_seed(0)
    config = config_for(mode, tiny_dataset, tmp_path, **extra)
    config.validate()
    coco = CocoDetection(*split_files(tiny_dataset, "train"))
    batch = collate([DetectionData(coco, (128, 128), train=True)[i] for i in range(4)])
    model = prepare_model(config).train()
    model.apply(lambda m: m.eval() if isinstance(m, torch.nn.Dropout) else None)
    optimizer = make_optimizer(config, model)

    def loss():
        with torch.no_grad():
            torch.manual_seed(1)  # same random mask for random:<r>
            return float(sum(compute_losses(config, model, model, batch).values()))

    before = loss()
    for _ in range(2):
        torch.manual_seed(1)
        train_step(config, model, model, optimizer, batch)
    after = loss()
    assert after < before, (before, after)
    if mode == "omg":  # the detector is frozen while the OMG alone learns
        assert all(p.grad is None for p in model.detector.parameters())


def test_lr_schedules():
    cfg = TrainConfig(lr=0.1, epochs=10, warmup_iters=10, warmup_ratio=0.001, steps=(5, 8))
    assert lr_at(cfg, 0, 10) == pytest.approx(1e-4)
    assert lr_at(cfg, 10, 10) == pytest.approx(0.1)
    assert lr_at(cfg, 55, 10) == pytest.approx(0.01)
    assert lr_at(cfg, 85, 10) == pytest.approx(0.001)
    poly = replace(cfg, schedule="poly", warmup_iters=0, poly_power=2.0)
    assert lr_at(poly, 50, 10) == pytest.approx(0.1 * 0.5 ** 2)  # paper: lr0 * (1 - t/T)^2


@pytest.mark.slow
def test_resume_restores_optimizer_and_continues_exactly(tiny_dataset, tmp_path):
    straight = config_for("e2e", tiny_dataset, tmp_path / "a", max_iters=None)
    train(straight, progress=False)
    full = load_checkpoint(Path(straight.out) / "last.pt")

    first = replace(straight, out=str(tmp_path / "b"), epochs=1)
    train(first, progress=False)
    half = load_checkpoint(Path(first.out) / "last.pt")
    assert half.training_state["epoch"] == 1 and "state" in half.training_state["optimizer"]
    resumed = replace(first, epochs=2)
    train(resumed, resume=str(Path(first.out) / "last.pt"), progress=False)
    again = load_checkpoint(Path(first.out) / "last.pt")
    assert again.training_state["epoch"] == 2
    assert again.training_state["iteration"] == full.training_state["iteration"]
    for key, value in full.od_state.items():
        assert torch.allclose(value.float(), again.od_state[key].float(), atol=1e-5), key
    exp_avg_full = [s["exp_avg"] for s in full.training_state["optimizer"]["state"].values()]
    exp_avg_again = [s["exp_avg"] for s in again.training_state["optimizer"]["state"].values()]
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(exp_avg_full, exp_avg_again))
    assert [h["epoch"] for h in again.metadata["history"]] == [2]


@pytest.mark.slow
def test_two_cpu_processes_with_gloo(tiny_dataset, tmp_path):
    out = tmp_path / "ddp"
    with socket.socket() as probe:  # a free port, not a fixed one another run may hold
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
           str(ROOT / "train" / "train.py"), "--mode", "vanilla", "--data", str(tiny_dataset),
           "--input-size", "96", "--width", "0.5", "--epochs", "1", "--batch-size", "2", "--workers", "0",
           "--max-iters", "2", "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-2000:]
    ckpt = load_checkpoint(out / "last.pt")
    assert ckpt.metadata["world_size"] == 2 and ckpt.metadata["iteration"] == 2


def test_cli_errors_are_one_line(tmp_path, capsys):
    from babo_edge.train.train import main
    assert main(["--mode", "vanilla", "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err
    assert main(["--mode", "pipeline", "--mask-source", "bogus", "--data", str(tmp_path)]) == 2
    assert "unknown mask source" in capsys.readouterr().err


def batchnorm_stats(module):
    return [b.clone() for m in module.modules() if isinstance(m, torch.nn.BatchNorm2d)
            for b in (m.running_mean, m.running_var)]


def test_pipeline_fine_tuning_keeps_the_frozen_omg_and_the_detector_statistics(tiny_dataset, tmp_path):
    torch.manual_seed(0)
    init = tmp_path / "init.pt"
    base = config_for("e2e", tiny_dataset, tmp_path)
    save_checkpoint(init, prepare_model(base), base.model, [str(i) for i in range(6)])
    config = config_for("pipeline", tiny_dataset, tmp_path, mask_source="omg", init=str(init), omg_init=str(init))
    assert config.masked and config.frozen_bn and not replace(config, bn="train").frozen_bn
    model = prepare_model(config)
    set_train_mode(config, model)
    assert not model.omg.training and model.detector.training
    omg_stats, od_stats = batchnorm_stats(model.omg), batchnorm_stats(model.detector)
    coco = CocoDetection(*split_files(tiny_dataset, "train"))
    batch = collate([DetectionData(coco, (128, 128), train=True)[i] for i in range(4)])
    with torch.no_grad():
        mask_before = model.objectness_mask(model.normalize(batch.images))[0]
    stats = train_step(config, model, model, make_optimizer(config, model), batch)
    assert all(torch.equal(a, b) for a, b in zip(omg_stats, batchnorm_stats(model.omg)))
    assert all(torch.equal(a, b) for a, b in zip(od_stats, batchnorm_stats(model.detector)))
    with torch.no_grad():  # dropout off, statistics fixed: the masks it trains on are its eval masks
        assert torch.equal(mask_before, model.objectness_mask(model.normalize(batch.images))[0])
    assert stats["positives"] + stats["dead_positives"] > 0


def test_vanilla_training_updates_batchnorm_statistics(tiny_dataset, tmp_path):
    config = config_for("vanilla", tiny_dataset, tmp_path)
    assert not config.masked and not config.frozen_bn
    model = prepare_model(config)
    set_train_mode(config, model)
    before = batchnorm_stats(model.detector)
    coco = CocoDetection(*split_files(tiny_dataset, "train"))
    batch = collate([DetectionData(coco, (128, 128), train=True)[i] for i in range(4)])
    train_step(config, model, model, make_optimizer(config, model), batch)
    assert not all(torch.equal(a, b) for a, b in zip(before, batchnorm_stats(model.detector)))


def test_mask_dilation_is_given_at_the_omg_resolution():
    config = TrainConfig(mode="omg", model=ModelConfig(input_size=(256, 256), omg_size=(128, 128)),
                         omg_loss=OMGLossConfig(dilation=5))
    assert omg_loss_config(config).dilation == 10
    same = replace(config, model=ModelConfig(input_size=(128, 128), omg_size=(128, 128)))
    assert omg_loss_config(same).dilation == 5


def test_wrong_initial_weights_and_config_keys_are_one_line_errors(tiny_dataset, tmp_path, capsys):
    from babo_edge.train.train import main as train_main
    vanilla = config_for("vanilla", tiny_dataset, tmp_path)
    narrow = tmp_path / "narrow.pt"
    save_checkpoint(narrow, prepare_model(replace(vanilla, model=replace(vanilla.model, width=0.75))),
                    replace(vanilla.model, width=0.75), [str(i) for i in range(6)])
    plain = tmp_path / "plain.pt"
    save_checkpoint(plain, prepare_model(vanilla), vanilla.model, [str(i) for i in range(6)])
    bad_config = tmp_path / "bad.json"
    bad_config.write_text('{"mode": "vanilla", "learning_rate": 0.1}')
    common = ["--data", str(tiny_dataset), "--input-size", "128", "--width", "0.5", "--max-iters", "1",
              "--workers", "0", "--batch-size", "2", "--out", str(tmp_path / "out")]
    cases = {"another width": (["--mode", "vanilla", "--init", str(narrow)], "shape"),
             "OMG from a vanilla checkpoint": (["--mode", "e2e", "--omg-init", str(plain)], "no OMG weights"),
             "resume from a released checkpoint": (["--mode", "vanilla", "--resume", str(plain)], "no training state"),
             "unknown config key": (["--config", str(bad_config)], "learning_rate")}
    for name, (args, message) in cases.items():
        assert train_main(args + common) == 2, name
        err = capsys.readouterr().err.strip().splitlines()
        assert err[-1].startswith("error: ") and message in err[-1], (name, err[-1:])
