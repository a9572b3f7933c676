"""Shared fixtures: a tiny built-in dataset generated once per test session."""
import pytest
import torch

# Denormal floats make freshly initialised CPU convolutions up to 20x slower (seen here).
torch.set_flush_denormal(True)


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory):
    """A few images of every split of the synthetic dataset (same generator as the default)."""
    from babo_edge.calibration.synthetic import generate
    root = tmp_path_factory.mktemp("data") / "tiny"
    return generate(root, seed=0, counts={"train": 12, "val": 6, "calib": 4, "video": 4},
                    progress=False, workers=1)
