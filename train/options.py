"""The training modes and BatchNorm choices: light, so the CLI validates its arguments before
torch is imported."""

MODES = ("omg", "vanilla", "pipeline", "e2e")
BN_MODES = ("auto", "train", "frozen")
BINARIZE = ("bidet", "plain")


def check_binarize(binarize: str, mode: str, schedule: str, model_binarize: str | None) -> None:
    """--binarize trains a binarized detector alone; BiDet's extra losses start at the first
    step decay, so it needs the step schedule (one-line ValueErrors for the CLI)."""
    if binarize not in BINARIZE:
        raise ValueError(f"--binarize must be one of {BINARIZE}, got {binarize!r}")
    if mode != "vanilla":
        raise ValueError(f"--binarize trains the detector alone: use --mode vanilla, not {mode}")
    if binarize == "bidet" and schedule != "step":
        raise ValueError("--binarize bidet switches its losses on at the first LR decay: use --schedule step")
    if model_binarize is None:
        raise ValueError("--binarize needs a binarized model config (model.binarize)")
