"""`unimodal-train`: the command-line entry point (absl flags + ml_collections config files).

  unimodal-train --config configs/demo.py --config.model.num_layers=4 --workdir runs/demo

Multi-process: every process runs the same command plus --coordinator_address (process 0's host:port),
--num_processes and --process_id (see launch/local_multihost.py); on TPU VMs, --distributed=auto.
"""
import sys

import jax
from absl import app, flags
from ml_collections import config_flags

from unimodal_jax.cli import common
from unimodal_jax.sample import periodic
from unimodal_jax.train import loop

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to a configs/*.py file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory: checkpoints, metrics, TensorBoard, plots.")
_DISTRIBUTED = flags.DEFINE_enum("distributed", "off", ["off", "auto", "explicit"],
                                 "off: one process; auto: jax.distributed.initialize() discovers the cluster (TPU "
                                 "VMs, SLURM); explicit: from the three flags below.")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (--distributed=explicit).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes (--distributed=explicit).")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index (--distributed=explicit).")
_HEARTBEAT_TIMEOUT = flags.DEFINE_integer(
    "heartbeat_timeout_s", 100, "A process silent this long counts as dead; the others then exit with an error "
    "instead of waiting for it forever.")
flags.mark_flags_as_required(["config", "workdir"])


def initialize_distributed():
  """Join the multi-process JAX cluster before any device is touched."""
  if _DISTRIBUTED.value == "auto":
    jax.distributed.initialize(heartbeat_timeout_seconds=_HEARTBEAT_TIMEOUT.value)
  elif _DISTRIBUTED.value == "explicit":
    missing = [f.name for f in (_COORDINATOR, _NUM_PROCESSES, _PROCESS_ID) if f.value is None]
    if missing:
      raise app.UsageError(f"--distributed=explicit needs {', '.join('--' + m for m in missing)}")
    jax.distributed.initialize(coordinator_address=_COORDINATOR.value, num_processes=_NUM_PROCESSES.value,
                               process_id=_PROCESS_ID.value, heartbeat_timeout_seconds=_HEARTBEAT_TIMEOUT.value)


def main():
  initialize_distributed()
  samples = periodic.PeriodicSamples(_CONFIG.value, _WORKDIR.value)  # validates config.sample first
  try:
    loop.train(_CONFIG.value, _WORKDIR.value, on_step=samples)
  finally:
    samples.close()
  if jax.process_index() == 0:
    print(f"Run finished. Outputs:\n{loop.describe_outputs(_WORKDIR.value)}", flush=True)


def run():
  common.run(sys.modules[__name__], main)


if __name__ == "__main__":
  run()
