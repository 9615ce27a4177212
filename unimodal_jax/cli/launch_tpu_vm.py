"""`unimodal-launch-tpu-vm`: run unimodal-train on Cloud TPU VM slices through a queued resource (docs/launch.md).

  unimodal-launch-tpu-vm up --name=c7b --project=PROJECT --zone=us-east5-a --accelerator_type=v5p-256 \\
      --provisioning=spot --wheel=dist/unimodal_jax-0.1.0-py3-none-any.whl -- \\
      --config=configs/chameleon_7b.py --workdir=gs://BUCKET/runs/c7b
  unimodal-launch-tpu-vm ACTION --name=c7b --project=PROJECT --zone=us-east5-a --accelerator_type=v5p-256 ...

ACTION: up (create, setup, train), create (queue the slices, wait until ACTIVE), setup (copy --copy and the wheel to
every worker, install), train (unimodal-train on every worker; its flags after --), logs (follow worker 0's log),
stop (SIGTERM: save a checkpoint and exit), delete (the queued resource and its TPU VMs).
--dry_run prints the gcloud commands, one per line, shell-quoted, instead of running them.
"""
import os
import sys

from absl import flags

from unimodal_jax.cli import launcher
from unimodal_jax.launch import common as launch_common, tpu_vm

_NAME = flags.DEFINE_string("name", None, "Queued resource name; the TPU VM node (one slice) or the node prefix "
                            "(slices <name>-0 ... <name>-N-1).")
_PROJECT = flags.DEFINE_string("project", None, "GCP project id.")
_ZONE = flags.DEFINE_string("zone", None, "GCP zone with the TPU capacity, e.g. us-east5-a (v5p).")
_ACCELERATOR_TYPE = flags.DEFINE_string("accelerator_type", None, "Cloud TPU accelerator type of each slice, e.g. "
                                        "v5p-256 (TensorCores for v4/v5p; chips for v5litepod, v6e).")
_NUM_SLICES = flags.DEFINE_integer("num_slices", 1, "Number of slices (multislice over the data-center network; "
                                   "unimodal-train then gets --config.mesh.dcn_data=N unless a mesh.dcn_* is given).")
_PROVISIONING = flags.DEFINE_enum("provisioning", "on-demand", list(tpu_vm.PROVISIONING),
                                  "Capacity: on-demand, spot (preemptible), reserved (your reservation) or "
                                  "best-effort (gcloud alpha).")
_RUNTIME_VERSION = flags.DEFINE_string("runtime_version", "", "TPU software version; default: the one Cloud TPU "
                                       f"recommends for the generation {tpu_vm.RUNTIME_VERSIONS}.")
_WHEEL = flags.DEFINE_string("wheel", "", "Local unimodal_jax wheel to copy and install (with the tpu extra) on every "
                             "worker; build it with `pip wheel --no-deps -w dist .`.")
_PACKAGE = flags.DEFINE_string("package", "", "Instead of --wheel: a pip requirement every worker installs, e.g. "
                               "'unimodal_jax[tpu] @ git+https://github.com/ORG/REPO@COMMIT'.")
_COPY = flags.DEFINE_list("copy", ["configs"], "Local files or folders copied into every worker's home directory, "
                          "where unimodal-train runs (so --config=configs/x.py resolves); --copy= for none.")
_ENV = flags.DEFINE_multi_string("env", [], "KEY=VALUE set for unimodal-train on every worker (repeatable), e.g. "
                                 "LIBTPU_INIT_ARGS=...; always set: "
                                 f"{dict(launch_common.DEFAULT_ENV)}.")
_MOUNT_BUCKET = flags.DEFINE_string("mount_bucket", "", "A Cloud Storage bucket mounted at /gcs/<bucket> on every "
                                     "host (Cloud Storage FUSE): --workdir and data.dir under it are shared by all "
                                     "hosts. Needed while unimodal-train reads and writes only local paths.")
_PYTHON = flags.DEFINE_string("python", "3.12", "Python of the workers' venv (~/unimodal-venv, made by uv).")
_DETACH = flags.DEFINE_bool("detach", False, "train/up: start unimodal-train in the background on every worker and "
                            "return; follow it with the logs action.")
_DRY_RUN = flags.DEFINE_bool("dry_run", False, "Print the commands, one per line, instead of running them.")

ACTIONS = ("up", "create", "setup", "train", "logs", "stop", "delete")
TRAIN_ACTIONS = ("up", "train")


def launch_args() -> tpu_vm.TpuVmArgs:
  return tpu_vm.TpuVmArgs(
      name=_NAME.value or "", project=_PROJECT.value or "", zone=_ZONE.value or "",
      accelerator_type=_ACCELERATOR_TYPE.value or "", num_slices=_NUM_SLICES.value, provisioning=_PROVISIONING.value,
      runtime_version=_RUNTIME_VERSION.value, wheel=_WHEEL.value, package=_PACKAGE.value,
      copy=tuple(p for p in _COPY.value if p), env=launch_common.parse_env(_ENV.value), python=_PYTHON.value,
      detach=_DETACH.value, mount_bucket=_MOUNT_BUCKET.value)


def build(action: str, train_argv: list[str]) -> list[list[str]]:
  args = launch_args()
  if action in ("up", "setup"):
    missing = [p for p in (*args.copy, *([args.wheel] if args.wheel else [])) if not os.path.exists(p)]
    if missing:
      raise launch_common.LaunchError(f"--copy/--wheel: {missing} not found (paths are relative to {os.getcwd()})")
  if action in TRAIN_ACTIONS:
    return getattr(tpu_vm, f"{action}_commands")(args, train_argv)
  return getattr(tpu_vm, f"{action}_commands")(args)


def run():
  launcher.run(sys.modules[__name__], ACTIONS, TRAIN_ACTIONS, build, lambda: _DRY_RUN.value)


if __name__ == "__main__":
  run()
