"""The training loop for the four recipes of the paper, on one CPU process or under torchrun.

Modes (paper sections 3.2-3.3, 4.4-4.5):
  omg       the OMG alone on GT masks (pixel CE + mask dilation, OHNEM, loss re-weighting, Table 1)
  vanilla   the detector alone (SSD multibox loss, hard-negative mining 3:1)
  pipeline  the detector on fixed masks from a source (GT instance/box, saliency, random, or a
            frozen trained OMG), Table 2
  e2e       OMG + detector jointly through sg-argmax or soft-argmax (Tables 3-4): detection loss
            plus the OMG pixel loss
"""
from __future__ import annotations

import json
import math
import os
import random
import sys
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from babo_edge.calibration.coco import CocoDetection
from babo_edge.calibration.synthetic import ensure_default_dataset, split_files
from babo_edge.models.builders import ModelConfig, build_detector, build_model
from babo_edge.models.checkpoint import CheckpointError, load_checkpoint, load_weights, save_checkpoint
from babo_edge.models.detector import BABODetector
from babo_edge.train.data import Batch, DetectionData, collate
from babo_edge.models.pruning import apply_masks, magnitude_masks, prune_channels, sparsity_at
from babo_edge.train.options import BN_MODES, MODES, PruneSpec, check_binarize
from babo_edge.train.losses import (OMGLossConfig, fg_ratio_penalty, information_bottleneck_loss, multibox_loss,
                                   omg_loss, sparse_object_prior_loss)
from babo_edge.train.masks import check_source, external_mask



def configure_cpu(threads: int | None = None) -> int:
    """Sets torch's CPU threads (default: every core) and returns the count. With more than
    one thread OpenMP must wait passively (OMP_WAIT_POLICY=PASSIVE, set by the CLIs before
    torch starts): spin-waiting threads on a shared 2-core machine ran 3-4x slower than one
    thread."""
    threads = threads or os.cpu_count() or 1
    torch.set_num_threads(threads)
    return threads


@dataclass
class TrainConfig:
    mode: str = "e2e"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: str | None = None  # COCO-format folder with instances_<split>.json + images/<split>; None = built-in
    split: str = "train"
    mask_source: str = "gt-instance"  # pipeline mode: gt-instance, gt-box, sr, random:<r>, omg
    mask_gt: str = "instance"  # OMG supervision: GT instance masks or GT box masks
    init: str | None = None  # checkpoint to start from (its matching weights are loaded)
    omg_init: str | None = None  # checkpoint whose OMG weights are loaded (pipeline omg / e2e)
    epochs: int = 24
    batch_size: int = 16
    optimizer: str = "sgd"
    lr: float = 0.02
    momentum: float = 0.9
    weight_decay: float = 4e-5
    schedule: str = "step"  # step | poly | cosine
    steps: tuple[int, ...] = (16, 22)  # epochs at which step decays by 10x
    poly_power: float = 2.0
    warmup_iters: int = 500
    warmup_ratio: float = 0.001
    omg_loss: OMGLossConfig = field(default_factory=OMGLossConfig)
    omg_loss_weight: float = 1.0
    fg_ratio_target: float | None = None  # e2e: penalise a mean OMG foreground probability above this
    fg_ratio_weight: float = 10.0
    workers: int = 2
    seed: int = 0
    out: str = "runs/train"
    max_iters: int | None = None  # stop early (smoke runs, tests)
    grad_clip: float | None = 10.0
    mask_aware_loss: bool = True  # blacked-out anchors are left out of the detection loss
    bn: str = "auto"  # detector BatchNorm: train | frozen | auto (frozen when fine-tuning on masks)
    threads: int | None = None  # torch CPU threads; None: every core (waits passively, see configure_cpu)
    channels_last: bool = True  # NHWC on CPU: faster convs, same numbers
    prune: str | None = None  # models.pruning.PruneSpec text: magnitude:R[:scope] | channels:R[:scope]
    prune_ramp: float = 0.5  # magnitude: the sparsity reaches R after this fraction of the iterations
    prune_every: int = 20  # magnitude: iterations between re-rankings of the weights during the ramp
    # Binarized detector (models/binary.py): "plain" = sign + STE only (Xnor/Bi-Real baseline),
    # "bidet" = plus the IB and sparse-object-prior losses from the first step decay on.
    binarize: str | None = None
    ib_weight: float = 0.1
    prior_weight: float = 0.2  # the paper's gamma

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "TrainConfig":
        unknown = set(data) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown training config keys: {sorted(unknown)}")
        data = dict(data)
        if "model" in data:
            data["model"] = ModelConfig.from_dict(data["model"])
        if "omg_loss" in data:
            data["omg_loss"] = OMGLossConfig(**data["omg_loss"])
        if "steps" in data:
            data["steps"] = tuple(data["steps"])
        return cls(**data)

    def validate(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"unknown mode {self.mode!r}; expected one of {MODES}")
        if self.mode == "pipeline":
            check_source(self.mask_source)
        if self.mode in ("omg", "e2e") and not self.model.omg:
            raise ValueError(f"mode {self.mode} trains an OMG: the model config needs omg=True")
        if self.mode == "vanilla" and self.model.omg:
            raise ValueError("mode vanilla trains a detector without OMG: set omg=False")
        if self.mode == "pipeline" and (self.mask_source == "omg") != self.model.omg:
            raise ValueError("pipeline mode has an OMG exactly when the mask source is 'omg'")
        if self.mask_gt not in ("instance", "box"):
            raise ValueError(f"mask_gt must be 'instance' or 'box', got {self.mask_gt!r}")
        if self.fg_ratio_target is not None and not 0 < self.fg_ratio_target < 1:
            raise ValueError(f"fg_ratio_target must be in (0, 1), got {self.fg_ratio_target}")
        if self.bn not in BN_MODES:
            raise ValueError(f"bn must be one of {BN_MODES}, got {self.bn!r}")
        if self.prune is not None:
            PruneSpec.parse(self.prune)
        if self.binarize is not None:
            check_binarize(self.binarize, self.mode, self.schedule, self.model.binarize)

    def bidet_losses_on(self, iteration: int, iters_per_epoch: int) -> bool:
        """BiDet's IB and prior terms switch on at the first LR decay (step schedule)."""
        return self.binarize == "bidet" and iteration >= self.steps[0] * iters_per_epoch

    @property
    def masked(self) -> bool:
        """The detector trains under a mask (its own OMG's or an external one)."""
        return self.mode == "e2e" or (self.mode == "pipeline" and self.mask_source != "none")

    @property
    def frozen_bn(self) -> bool:
        """Frozen detector BatchNorm statistics. In train mode the blacked-out zeros enter the
        batch statistics, so the running statistics drift from what the masked detector sees
        at inference; fine-tuning a trained detector on masks keeps its statistics instead."""
        if self.bn == "auto":
            return self.masked and self.init is not None
        return self.bn == "frozen"


def lr_at(config: TrainConfig, iteration: int, iters_per_epoch: int) -> float:
    """Learning rate at an iteration: linear warm-up, then step / poly / cosine (per epoch)."""
    total = config.epochs * iters_per_epoch
    if iteration < config.warmup_iters:
        alpha = iteration / config.warmup_iters
        warm = config.warmup_ratio * (1 - alpha) + alpha
    else:
        warm = 1.0
    epoch = iteration / iters_per_epoch
    if config.schedule == "step":
        factor = 0.1 ** sum(epoch >= s for s in config.steps)
    elif config.schedule == "poly":
        factor = max(0.0, 1 - iteration / total) ** config.poly_power
    elif config.schedule == "cosine":
        factor = 0.5 * (1 + math.cos(math.pi * min(iteration / total, 1.0)))
    else:
        raise ValueError(f"unknown schedule {config.schedule!r}")
    return config.lr * warm * factor


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def dataset_for(config: TrainConfig, split: str) -> CocoDetection:
    root = Path(config.data) if config.data else ensure_default_dataset()
    ann, images = split_files(root, split)
    return CocoDetection(ann, images)


def prepare_model(config: TrainConfig) -> BABODetector:
    """Build the model, load initial weights, freeze what the mode does not train."""
    init = load_checkpoint(config.init) if config.init else None
    if init is not None and config.model.binarize and not init.config.binarize:
        # FP32 weights into the real-valued detector, then binarized: binary blocks may rename
        # a conv's parameters (VGG16's BinaryConvBN), MobileNetV2's keep theirs.
        detector = build_detector(replace(config.model, binarize=None))
        load_weights(config.init, "detector", detector, init.od_state)
        model = build_model(config.model, detector)
    else:
        model = build_model(config.model)
        if init is not None:
            load_weights(config.init, "detector", model.detector, init.od_state)
    if init is not None and model.omg is not None and init.omg_state is not None:
        load_weights(config.init, "OMG", model.omg, init.omg_state)
    if config.omg_init:
        if model.omg is None:
            raise ValueError("--omg-init needs a model with an OMG (mode omg, e2e, or pipeline with mask source omg)")
        load_weights(config.omg_init, "OMG", model.omg, load_checkpoint(config.omg_init).omg_state)
    freeze_for_mode(config, model)
    return model


def freeze_for_mode(config: TrainConfig, model: BABODetector) -> None:
    """Freeze what the mode does not train."""
    if config.mode == "omg":
        model.detector.requires_grad_(False)
    if config.mode == "pipeline" and model.omg is not None:
        model.omg.requires_grad_(False)


class MagnitudeSchedule:
    """Fine-tuning under magnitude pruning: the sparsity ramps from 0 to the target over the
    first `config.prune_ramp` of the iterations (re-ranked every `config.prune_every`), and the
    current masks are re-applied after every optimizer step, so pruned weights stay 0."""

    def __init__(self, config: TrainConfig, model: BABODetector, spec: PruneSpec, total_iters: int):
        self.config, self.model, self.spec = config, model, spec
        self.ramp = round(config.prune_ramp * total_iters)
        self.masks: dict = {}

    def after_step(self, iteration: int) -> None:
        """`iteration` = optimizer steps done so far."""
        if not self.masks or (iteration <= self.ramp and iteration % self.config.prune_every == 0):
            ratio = sparsity_at(iteration, self.ramp, self.spec.ratio)
            self.masks = magnitude_masks(self.model, ratio, self.spec.scope)
        apply_masks(self.masks)


def make_optimizer(config: TrainConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    raise ValueError(f"unknown optimizer {config.optimizer!r}")


def set_train_mode(config: TrainConfig, model: BABODetector) -> None:
    """train() on what the mode trains: a frozen OMG (pipeline) stays in eval mode, so its
    dropout is off and its BatchNorm statistics do not move, and so do the detector's
    BatchNorms when `config.frozen_bn`."""
    model.train()
    if config.mode == "pipeline" and model.omg is not None:
        model.omg.eval()
    if config.mode == "omg":
        model.detector.eval()
    if config.frozen_bn:
        for module in model.detector.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.eval()


def omg_loss_config(config: TrainConfig) -> OMGLossConfig:
    """The OMG loss with its dilation kernel given at the OMG's input resolution (as the paper's
    Table 1 at its OMG size) scaled to the detector size at which the loss is computed."""
    model = config.model
    if not model.omg_size or config.omg_loss.dilation <= 1:
        return config.omg_loss
    scale = model.input_size[0] / model.omg_size[0]
    return replace(config.omg_loss, dilation=max(1, round(config.omg_loss.dilation * scale)))


def compute_losses(config: TrainConfig, model: BABODetector, forward, batch: Batch,
                   stats: dict[str, float] | None = None, bidet: bool = False) -> dict[str, torch.Tensor]:
    """Loss terms of one batch. `forward` is the (possibly DDP-wrapped) model; `stats`, when
    given, receives counts (dead positives: matched anchors the mask blacked out); `bidet` adds
    BiDet's IB term on the head inputs and its sparse object prior on the detections."""
    gt_mask = batch.instance_masks if config.mask_gt == "instance" else batch.box_masks
    images = batch.images.contiguous(memory_format=torch.channels_last) if config.channels_last else batch.images
    losses = {}
    if config.mode == "omg":
        _, logits = model.objectness_mask(model.normalize(images))
        losses["omg"] = omg_loss(logits, gt_mask, omg_loss_config(config))
        return losses
    mask = external_mask(config.mask_source, batch, model) if config.mode == "pipeline" else None
    head_inputs: list[torch.Tensor] = []
    hook = (model.detector.head.register_forward_pre_hook(lambda _m, args: head_inputs.extend(args[0]))
            if bidet else None)
    try:
        out = forward(images, mask)
    finally:
        if hook is not None:
            hook.remove()
    if bidet:
        detections = model.decode(out, tuple(images.shape[-2:]))
        losses["ib"] = config.ib_weight * information_bottleneck_loss(head_inputs)
        losses["prior"] = config.prior_weight * sparse_object_prior_loss(
            detections[:, 2], detections[:, 0], images.shape[0])
    det = multibox_loss(out.cls_logits, out.box_deltas, out.anchors, batch.boxes, batch.labels,
                        model.detector.coder, alive=out.alive if config.mask_aware_loss else None,
                        train_dead_positives=config.mode == "e2e")
    losses["cls"], losses["box"] = det.cls, det.box
    if stats is not None and out.alive is not None:
        stats["positives"] = det.positives
        stats["dead_positives"] = det.dead_positives
    if config.mode == "e2e":
        losses["omg"] = config.omg_loss_weight * omg_loss(out.omg_logits, gt_mask, omg_loss_config(config))
        if config.fg_ratio_target is not None:
            losses["fg"] = config.fg_ratio_weight * fg_ratio_penalty(out.omg_logits, config.fg_ratio_target)
    return losses


def train_step(config: TrainConfig, model: BABODetector, forward, optimizer: torch.optim.Optimizer,
               batch: Batch, bidet: bool = False) -> dict[str, float]:
    optimizer.zero_grad(set_to_none=True)
    counts: dict[str, float] = {}
    losses = compute_losses(config, model, forward, batch, counts, bidet)
    total = sum(losses.values())
    if not torch.isfinite(total):  # NaN guard (BiDet's reference code diverges): skip the step
        return {"skipped": 1.0}
    total.backward()
    if config.grad_clip:
        # Per network: the surrogate gradient reaching the OMG through the mask is ~10x the
        # detector's; one global norm would shrink the detector's steps to a few percent.
        for part in (model.omg, model.detector):
            if part is not None:
                torch.nn.utils.clip_grad_norm_([p for p in part.parameters() if p.requires_grad], config.grad_clip)
    optimizer.step()
    return {"loss": float(total.detach()), **{k: float(v.detach()) for k, v in losses.items()}, **counts}


def _distributed() -> tuple[int, int]:
    """(rank, world size); initialises the process group when launched by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return (dist.get_rank(), world) if world > 1 else (0, 1)


class Trainer:
    """One training run: set up from a TrainConfig (data, model, optional one-shot channel
    pruning, optimizer), optionally resumed from a checkpoint's training state, then `run`
    epoch by epoch, writing `epoch_<k>.pt` and `last.pt` into config.out after each epoch."""

    def __init__(self, config: TrainConfig, progress: bool = True):
        config.validate()
        configure_cpu(config.threads)
        torch.set_flush_denormal(True)  # denormal activations/gradients make CPU steps up to 20x slower
        self.rank, self.world = _distributed()
        seed_everything(config.seed + self.rank)
        self.dataset = dataset_for(config, config.split)
        config = replace(config, model=replace(config.model, num_classes=len(self.dataset.class_names)))
        model = prepare_model(config)
        self.prune_spec = PruneSpec.parse(config.prune) if config.prune else None
        if self.prune_spec is not None and self.prune_spec.method == "channels":  # one-shot, then fine-tuning
            model, pruned = prune_channels(model, config.model, self.prune_spec.ratio, self.prune_spec.scope)
            config = replace(config, model=pruned)
            freeze_for_mode(config, model)
        if config.channels_last:
            model.to(memory_format=torch.channels_last)
        self.config, self.model, self.progress = config, model, progress
        self.data = DetectionData(self.dataset, config.model.input_size, train=True, mean=config.model.mean,
                                  seed=config.seed)
        self.sampler = (torch.utils.data.DistributedSampler(self.data, self.world, self.rank, shuffle=True,
                                                            seed=config.seed) if self.world > 1 else None)
        self.generator = torch.Generator()
        self.loader = torch.utils.data.DataLoader(
            self.data, batch_size=config.batch_size, shuffle=self.sampler is None, sampler=self.sampler,
            num_workers=config.workers, collate_fn=collate,
            drop_last=len(self.data) >= config.batch_size * self.world, generator=self.generator,
            persistent_workers=False)
        self.forward = DistributedDataParallel(model) if self.world > 1 else model
        self.optimizer = make_optimizer(config, model)
        self.start_epoch, self.iteration = 0, 0
        self.iters_per_epoch = max(len(self.loader), 1)
        self.history: list[dict] = []

    def resume(self, path: str | os.PathLike) -> None:
        """Weights, optimizer, RNG, epoch and iteration from a checkpoint train wrote."""
        ckpt = load_checkpoint(path)
        load_weights(path, "detector", self.model.detector, ckpt.od_state)
        if self.model.omg is not None:
            load_weights(path, "OMG", self.model.omg, ckpt.omg_state)
        if ckpt.training_state is None:
            raise CheckpointError(f"{path}: no training state to resume from (a released checkpoint?); use --init")
        self.optimizer.load_state_dict(ckpt.training_state["optimizer"])
        torch.set_rng_state(ckpt.training_state["torch_rng"])
        self.start_epoch, self.iteration = ckpt.training_state["epoch"], ckpt.training_state["iteration"]

    @property
    def done(self) -> bool:
        return bool(self.config.max_iters) and self.iteration >= self.config.max_iters

    def run(self) -> Path:
        """Trains the remaining epochs; returns the path of the last checkpoint."""
        config = self.config
        total_iters = min(config.epochs * self.iters_per_epoch, config.max_iters or config.epochs * self.iters_per_epoch)
        schedule = (MagnitudeSchedule(config, self.model, self.prune_spec, total_iters)
                    if self.prune_spec is not None and self.prune_spec.method == "magnitude" else None)
        started = time.time()
        set_train_mode(config, self.model)
        last = Path(config.out) / "last.pt"
        for epoch in range(self.start_epoch, config.epochs):
            self.history.append({"epoch": epoch + 1, **self.epoch(epoch, schedule)})
            if self.rank == 0:
                self.save(epoch + 1, time.time() - started, last)
            if self.done:
                break
        if self.world > 1:
            dist.barrier()
        return last

    def epoch(self, epoch: int, schedule: MagnitudeSchedule | None) -> dict[str, float]:
        """One pass over the data (stopped at max_iters); returns the mean of every step statistic."""
        config, optimizer = self.config, self.optimizer
        self.data.set_epoch(epoch)
        self.generator.manual_seed(config.seed * 100_003 + epoch)  # shuffle order depends on the epoch only
        if self.sampler is not None:
            self.sampler.set_epoch(epoch)
        bar = tqdm(self.loader, desc=f"{config.mode} epoch {epoch + 1}/{config.epochs}",
                   disable=not self.progress or self.rank, dynamic_ncols=True, file=sys.stderr)
        sums: dict[str, float] = {}
        steps = 0
        for batch in bar:
            for group in optimizer.param_groups:
                group["lr"] = lr_at(config, self.iteration, self.iters_per_epoch)
            stats = train_step(config, self.model, self.forward, optimizer, batch,
                               config.bidet_losses_on(self.iteration, self.iters_per_epoch))
            self.iteration += 1
            if schedule is not None:
                schedule.after_step(self.iteration)
            steps += 1
            for k, v in stats.items():
                sums[k] = sums.get(k, 0.0) + v
            bar.set_postfix({k: f"{v / steps:.3f}" for k, v in sums.items()} | {"lr": f"{optimizer.param_groups[0]['lr']:.4f}"})
            if self.done:
                break
        return {k: v / max(steps, 1) for k, v in sums.items()}

    def save(self, epoch: int, seconds: float, last: Path) -> None:
        config = self.config
        meta = {"mode": config.mode, "epoch": epoch, "iteration": self.iteration, "history": self.history,
                "train_config": json.loads(json.dumps(config.to_dict())), "world_size": self.world,
                "seconds": seconds, "command": " ".join(sys.argv)}
        state = {"optimizer": self.optimizer.state_dict(), "epoch": epoch, "iteration": self.iteration,
                 "torch_rng": torch.get_rng_state()}
        save_checkpoint(last.with_name(f"epoch_{epoch}.pt"), self.model, config.model, self.dataset.class_names,
                        meta, state)
        save_checkpoint(last, self.model, config.model, self.dataset.class_names, meta, state)


def train(config: TrainConfig, resume: str | os.PathLike | None = None, progress: bool = True) -> Path:
    """Runs training (Trainer), resumed from `resume` if given; writes `epoch_<k>.pt` and
    `last.pt` checkpoints into config.out. Returns the path of the last checkpoint."""
    trainer = Trainer(config, progress)
    if resume:
        trainer.resume(resume)
    return trainer.run()
