"""The training modes, BatchNorm choices and --prune specs: light, so the CLI validates its
arguments before torch is imported."""

from __future__ import annotations

from dataclasses import dataclass

MODES = ("omg", "vanilla", "pipeline", "e2e")
BN_MODES = ("auto", "train", "frozen")
PRUNE_METHODS = ("magnitude", "channels")
PRUNE_SCOPES = ("backbone", "heads", "all")  # models.pruning.SCOPES


@dataclass(frozen=True)
class PruneSpec:
    """`method:ratio[:scope]`, e.g. `magnitude:0.5:heads` (scope defaults to all)."""

    method: str
    ratio: float
    scope: str = "all"

    @classmethod
    def parse(cls, text: str) -> "PruneSpec":
        parts = text.split(":")
        if len(parts) not in (2, 3):
            raise ValueError(f"--prune {text!r}: expected METHOD:RATIO[:SCOPE]")
        method, ratio_text, *scope = parts
        if method not in PRUNE_METHODS:
            raise ValueError(f"--prune {text!r}: method must be one of {', '.join(PRUNE_METHODS)}")
        try:
            ratio = float(ratio_text)
        except ValueError:
            raise ValueError(f"--prune {text!r}: ratio {ratio_text!r} is not a number") from None
        if not 0 <= ratio < 1:
            raise ValueError(f"--prune {text!r}: ratio must be in [0, 1)")
        scope_name = scope[0] if scope else "all"
        if scope_name not in PRUNE_SCOPES:
            raise ValueError(f"--prune {text!r}: scope must be one of {', '.join(PRUNE_SCOPES)}")
        return cls(method, ratio, scope_name)


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
