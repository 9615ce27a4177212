"""Checkpoint conversion between our param tree and PyTorch formats (docs/design.md, "Conversion"); never used in
training."""
