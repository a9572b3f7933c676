"""The shipped demo checkpoints load, match the built-in dataset and keep their promise.

The tiny dataset's val images are the first images of the default val split (every image is a
function of seed, split and index), so these run the shipped models on real val images.
"""
from pathlib import Path

import pytest
import torch

from babo_edge.calibration.synthetic import read_manifest
from babo_edge.models.checkpoint import load_model
from babo_edge.train.evaluation import evaluate

ZOO = Path(__file__).resolve().parents[1] / "models" / "zoo"
VANILLA, BABO = ZOO / "vanilla-ssdlite-256.pt", ZOO / "babo-ssdlite-256.pt"
BIDET = ZOO / "bidet-ssdlite-256.pt"
PRUNED = ZOO / "pruned-channels50-ssdlite-256.pt"
VGG = ZOO / "vgg16-bn-ssd300-w025.pt"
BIDET_VGG = ZOO / "bidet-vgg16-bn-ssd300-w025.pt"


@pytest.mark.parametrize("path", [VANILLA, BABO, BIDET, PRUNED, VGG, BIDET_VGG])
def test_zoo_checkpoints_load_and_match_the_builtin_classes(path, tiny_dataset):
    model, ckpt = load_model(path)
    assert ckpt.class_names == read_manifest(tiny_dataset)["class_names"]
    assert ckpt.config.input_size == ((300, 300) if path in (VGG, BIDET_VGG) else (256, 256)) and ckpt.training_state is None
    assert ckpt.metadata["command"].startswith("train/train.py")
    assert (model.omg is not None) == (path == BABO)


def test_vgg16_checkpoint_is_the_quarter_width_vgg16_bn_ssd300():
    _, ckpt = load_model(VGG)
    assert (ckpt.config.arch, ckpt.config.width, ckpt.config.binarize) == ("vgg16-bn-ssd300", 0.25, None)


def test_babo_blacks_out_background_and_costs_less(tiny_dataset):
    results = {}
    for path in (VANILLA, BABO):
        model, ckpt = load_model(path)
        results[path] = evaluate(model, tiny_dataset, input_size=ckpt.config.input_size,
                                 class_names=ckpt.class_names, progress=False)
    vanilla, babo = results[VANILLA], results[BABO]
    assert 0.15 < babo.fg_ratio < 0.8  # the OMG keeps part of the image, not all, not nothing
    assert babo.instance_recall["overall"] > 0.7
    assert babo.gmac > vanilla.gmac  # the OMG's own cost is counted
    assert babo.gmac_star < 0.75 * vanilla.gmac_star
    assert vanilla.metrics["AP50"] > 10 and babo.metrics["AP50"] > 5


def test_bidet_checkpoint_is_the_binarized_vanilla_detector():
    from babo_edge.models.binary import binary_convs

    model, ckpt = load_model(BIDET)
    assert ckpt.config.binarize == "bireal" and ckpt.metadata["train_config"]["binarize"] == "bidet"
    assert len(binary_convs(model)) == 17  # the 1x1 expansions and head_conv (models/binary.py)


def test_bidet_vgg16_checkpoint_binarizes_the_vgg16_bn_trunk():
    from babo_edge.models.binary import binary_convs

    model, ckpt = load_model(BIDET_VGG)
    assert (ckpt.config.arch, ckpt.config.width, ckpt.config.binarize) == ("vgg16-bn-ssd300", 0.25, "bireal")
    assert ckpt.metadata["train_config"]["binarize"] == "bidet"
    assert len(binary_convs(model)) == 14  # conv1_2 .. conv5_3, fc6 and fc7: every trunk conv but conv1_1 (models/binary.py)


def test_pruned_checkpoint_is_the_vanilla_detector_with_half_its_channels_removed():
    """It rebuilds from its own widths (models/pruning.py): 50% of the prunable channels gone
    (hidden, stage outputs, the final 1x1 conv's, the extras' middles), a third of the
    detector's parameters left, and no weight merely zeroed."""
    model, ckpt = load_model(PRUNED)
    vanilla, _ = load_model(VANILLA)
    assert ckpt.metadata["train_config"]["prune"] == "channels:0.5" and ckpt.config.pruned_widths is not None
    count = lambda m: sum(p.numel() for p in m.detector.parameters())  # noqa: E731
    assert 0.28 < count(model) / count(vanilla) < 0.36
    weights = [p for p in model.detector.parameters() if p.dim() == 4]
    assert sum(int((p == 0).sum()) for p in weights) < 0.02 * sum(p.numel() for p in weights)  # fp16 underflow only
    def depthwise_widths(m) -> list[int]:  # the hidden width of each inverted residual, in order
        return [conv.out_channels for conv in m.detector.backbone.modules()
                if isinstance(conv, torch.nn.Conv2d) and conv.groups > 1]
    hidden, published = ckpt.config.pruned_widths["backbone"], depthwise_widths(vanilla)
    assert depthwise_widths(model) == hidden and len(hidden) == len(published) == 17
    assert hidden == [width // 2 for width in published]  # block 0's hidden channels are the stem's
    stages = [stage[-1].out_channels for stage in model.detector.backbone.stages]
    assert stages == ckpt.config.pruned_widths["stages"] == [8, 16, 16, 32, 48, 80, 160]  # 12 rounds up to 16
    assert model.detector.backbone.last_channels == ckpt.config.pruned_widths["head_conv"][0] == 640
    assert model.detector.backbone.stem[0].out_channels == hidden[0] == 16
