"""`unimodal-train-vq`: train the VQGAN image tokenizer (absl flags + a configs/vq_*.py file).

  unimodal-train-vq --config configs/vq_photos.py --workdir runs/vq_photos [--config.vq_train.num_steps=2000]
"""
import sys

from absl import flags
from ml_collections import config_flags

from unimodal_jax.cli import common
from unimodal_jax.train import vq_loop

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to a configs/vq_*.py file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory: checkpoints, metrics, the exported tokenizer.")
flags.mark_flags_as_required(["config", "workdir"])


def main():
  final = vq_loop.train(_CONFIG.value, _WORKDIR.value)
  print(f"eval: {final}\ntokenizer: {_WORKDIR.value}/{vq_loop.TOKENIZER_DIR}", flush=True)


def run():
  common.run(sys.modules[__name__], main)


if __name__ == "__main__":
  run()
