"""Training: optimizer and sharded state, the train step, checkpoints, metrics and the CLI loop."""
