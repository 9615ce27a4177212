"""`unimodal-train`: the command-line entry point (absl flags + ml_collections config files).

  unimodal-train --config configs/demo.py --config.model.num_layers=4 --workdir runs/demo

Multi-process: every process runs the same command plus --coordinator_address (process 0's host:port),
--num_processes and --process_id (see launch/local_multihost.py); on TPU VMs, --distributed=auto.
"""
import sys

import jax
from absl import flags
from ml_collections import config_flags

from unimodal_jax.cli import common
from unimodal_jax.sample import periodic
from unimodal_jax.train import loop

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to a configs/*.py file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory: checkpoints, metrics, TensorBoard, plots.")
_DISTRIBUTED = common.define_distributed_flags(__name__)
flags.mark_flags_as_required(["config", "workdir"])


def main():
  _DISTRIBUTED.initialize()
  samples = periodic.PeriodicSamples(_CONFIG.value, _WORKDIR.value)  # validates config.sample first
  try:
    loop.train(_CONFIG.value, _WORKDIR.value, on_step=samples)
  except Exception as e:  # noqa: BLE001 -- reported, then exit without the interpreter's teardown
    common.exit_with_error(e)
  finally:
    samples.close()
  if jax.process_index() == 0:
    print(f"Run finished. Outputs:\n{loop.describe_outputs(_WORKDIR.value)}", flush=True)


def run():
  common.run(sys.modules[__name__], main)


if __name__ == "__main__":
  run()
