"""BABO networks, masking, checkpoints and MAC/MAC* accounting.

Kept import-light on purpose: `models.accounting` must be importable on an edge box without
torch, so nothing here imports torch eagerly. Import the submodules you need.
"""
