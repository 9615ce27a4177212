"""The model: the early-fusion transformer and its loss."""
