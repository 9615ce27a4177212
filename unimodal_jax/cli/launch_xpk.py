"""`unimodal-launch-xpk`: run unimodal-train on GKE TPU slices with xpk (docs/launch.md).

  unimodal-launch-xpk cluster --cluster=tpu --workload=c7b --project=PROJECT --zone=us-east5-a --tpu_type=v5p-256 \\
      --docker_image=gcr.io/PROJECT/unimodal-jax:v1 --provisioning=spot
  unimodal-launch-xpk up --cluster=tpu --workload=c7b ... -- \\
      --config=configs/chameleon_7b.py --workdir=gs://BUCKET/runs/c7b

ACTION: cluster (xpk cluster create), up (image, train, logs), image (docker build launch/Dockerfile and push), train
(xpk workload create; unimodal-train's flags after --), logs (follow the first pod's log), delete (the workload),
delete_cluster. A preempted run saves, exits 42 (launch/pod_train.sh) and is restarted by its JobSet up to
--max_restarts times, resuming from the checkpoint. --dry_run prints the commands, one per line, shell-quoted,
instead of running them.
"""
import os
import sys

from absl import flags

from unimodal_jax.cli import launcher
from unimodal_jax.launch import common as launch_common, xpk

_CLUSTER = flags.DEFINE_string("cluster", None, "GKE cluster name (xpk cluster).")
_WORKLOAD = flags.DEFINE_string("workload", None, "xpk workload name (at most 40 characters).")
_PROJECT = flags.DEFINE_string("project", None, "GCP project id.")
_ZONE = flags.DEFINE_string("zone", None, "GCP zone of the TPU node pools, e.g. us-east5-a (v5p).")
_TPU_TYPE = flags.DEFINE_string("tpu_type", None, "TPU type of each slice, e.g. v5p-256.")
_DOCKER_IMAGE = flags.DEFINE_string("docker_image", None, "Image to build and push (image, up) and to run, e.g. "
                                    "gcr.io/PROJECT/unimodal-jax:v1.")
_NUM_SLICES = flags.DEFINE_integer("num_slices", 1, "Number of slices (multislice; unimodal-train then gets "
                                   "--config.mesh.dcn_data=N unless a mesh.dcn_* is given).")
_PROVISIONING = flags.DEFINE_enum("provisioning", "on-demand", list(xpk.PROVISIONING),
                                  "Capacity of the cluster's TPU node pools (cluster action).")
_RESERVATION = flags.DEFINE_string("reservation", "", "Reservation name, with --provisioning=reservation.")
_PRIORITY = flags.DEFINE_enum("priority", "medium", list(xpk.PRIORITIES), "Workload priority in the cluster queue.")
_MAX_RESTARTS = flags.DEFINE_integer("max_restarts", 10, "Restarts of the workload after a failure or preemption; "
                                     "each resumes from the newest checkpoint.")
_ENV = flags.DEFINE_multi_string("env", [], "KEY=VALUE set for unimodal-train in every pod (repeatable); always "
                                 f"set: {dict(launch_common.DEFAULT_ENV)}.")
_MOUNT_BUCKET = flags.DEFINE_string("mount_bucket", "", "A Cloud Storage bucket mounted at /gcs/<bucket> on every "
                                     "host (Cloud Storage FUSE): --workdir and data.dir under it are shared by all "
                                     "hosts. Needed while unimodal-train reads and writes only local paths.")
_CONTEXT = flags.DEFINE_string("context", ".", "Docker build context: the repository root (image, up).")
_DRY_RUN = flags.DEFINE_bool("dry_run", False, "Print the commands, one per line, instead of running them.")

ACTIONS = ("up", "cluster", "image", "train", "logs", "delete", "delete_cluster")
TRAIN_ACTIONS = ("up", "train")


def launch_args() -> xpk.XpkArgs:
  return xpk.XpkArgs(
      cluster=_CLUSTER.value or "", workload=_WORKLOAD.value or "", project=_PROJECT.value or "",
      zone=_ZONE.value or "", tpu_type=_TPU_TYPE.value or "", docker_image=_DOCKER_IMAGE.value or "",
      num_slices=_NUM_SLICES.value, provisioning=_PROVISIONING.value, reservation=_RESERVATION.value,
      priority=_PRIORITY.value, max_restarts=_MAX_RESTARTS.value, env=launch_common.parse_env(_ENV.value),
      mount_bucket=_MOUNT_BUCKET.value)


def build(action: str, train_argv: list[str]) -> list[list[str]]:
  args = launch_args()
  if action in ("up", "image") and not os.path.isfile(os.path.join(_CONTEXT.value, xpk.DOCKERFILE)):
    raise launch_common.LaunchError(f"--context={_CONTEXT.value!r}: no {xpk.DOCKERFILE} there; give the "
                                    f"repository root")
  if action == "up":
    return xpk.up_commands(args, train_argv, _CONTEXT.value)
  if action == "image":
    return xpk.image_commands(args, _CONTEXT.value)
  if action == "train":
    return xpk.train_commands(args, train_argv)
  return getattr(xpk, f"{action}_commands")(args)


def run():
  launcher.run(sys.modules[__name__], ACTIONS, TRAIN_ACTIONS, build, lambda: _DRY_RUN.value)


if __name__ == "__main__":
  run()
