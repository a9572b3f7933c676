"""The training modes and BatchNorm choices: light, so the CLI validates its arguments before
torch is imported."""

MODES = ("omg", "vanilla", "pipeline", "e2e")
BN_MODES = ("auto", "train", "frozen")
