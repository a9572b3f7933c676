"""The shipped demo checkpoints load, match the built-in dataset and keep their promise.

The tiny dataset's val images are the first images of the default val split (every image is a
function of seed, split and index), so these run the shipped models on real val images.
"""
from pathlib import Path

import pytest

from babo_edge.calibration.synthetic import read_manifest
from babo_edge.models.checkpoint import load_model
from babo_edge.train.evaluation import evaluate

ZOO = Path(__file__).resolve().parents[1] / "models" / "zoo"
VANILLA, BABO = ZOO / "vanilla-ssdlite-256.pt", ZOO / "babo-ssdlite-256.pt"
BIDET = ZOO / "bidet-ssdlite-256.pt"


@pytest.mark.parametrize("path", [VANILLA, BABO, BIDET])
def test_zoo_checkpoints_load_and_match_the_builtin_classes(path, tiny_dataset):
    model, ckpt = load_model(path)
    assert ckpt.class_names == read_manifest(tiny_dataset)["class_names"]
    assert ckpt.config.input_size == (256, 256) and ckpt.training_state is None
    assert ckpt.metadata["command"].startswith("train/train.py")
    assert (model.omg is not None) == (path == BABO)


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
