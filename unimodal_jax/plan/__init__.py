"""Pod planning: compile the real train step ahead of time for a TPU topology; memory, FLOPs and fit."""
