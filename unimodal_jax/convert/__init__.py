"""Checkpoint conversion between our param tree and PyTorch formats (DESIGN section 8); never used in training."""
