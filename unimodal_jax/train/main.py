"""`unimodal-train`: the command-line entry point (absl flags + ml_collections config files).

  unimodal-train --config configs/demo.py --config.model.num_layers=4 --workdir runs/demo
"""
from absl import app, flags, logging
from ml_collections import config_flags

from unimodal_jax.train import loop

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to a configs/*.py file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory: checkpoints, metrics, TensorBoard, plots.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not flags.FLAGS["verbosity"].present:  # orbax logs every save at INFO; --verbosity=0 brings it back
    logging.set_verbosity(logging.WARNING)
  loop.train(_CONFIG.value, _WORKDIR.value)
  print(f"Run finished. Outputs:\n{loop.describe_outputs(_WORKDIR.value)}", flush=True)


def run():
  app.run(main)


if __name__ == "__main__":
  run()
