"""`unimodal-train-vq`: train the VQGAN image tokenizer (absl flags + a configs/vq_*.py file).

  unimodal-train-vq --config configs/vq_photos.py --workdir runs/vq_photos [--config.vq_train.num_steps=2000]
"""
from absl import app, flags, logging
from ml_collections import config_flags

from unimodal_jax.vq import vq_train

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to a configs/vq_*.py file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory: checkpoints, metrics, the exported tokenizer.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  final = vq_train.train(_CONFIG.value, _WORKDIR.value)
  print(f"eval: {final}\ntokenizer: {_WORKDIR.value}/{vq_train.TOKENIZER_DIR}", flush=True)


def run():
  app.run(main)


if __name__ == "__main__":
  run()
