"""GKE through xpk: the commands that create a TPU cluster, build and push the image (launch/Dockerfile), submit
`unimodal-train` as a JobSet workload on one or more slices, follow its log and delete it.

xpk's JobSet sets MEGASCALE_* (slice id, coordinator) in every pod for multislice, which libtpu and
`jax.distributed.initialize()` read; the image's working directory holds configs/.
"""
import dataclasses
import os
from collections.abc import Sequence

from unimodal_jax.launch import common
from unimodal_jax.launch.common import LaunchError

# Capacity of the cluster's TPU node pools: flags of `xpk cluster create` (a reservation also needs its name).
PROVISIONING = ("on-demand", "spot", "reservation", "flex")
PRIORITIES = ("very-low", "low", "medium", "high", "very-high")
CONTAINER = "jax-tpu"  # xpk's --docker-name default: the container whose log is followed
DOCKERFILE = "launch/Dockerfile"
# In the image's working directory: runs unimodal-train and exits 42 (xpk's restart status) after a preemption save.
POD_TRAIN = "launch/pod_train.sh"


@dataclasses.dataclass(frozen=True)
class XpkArgs:
  """One training job as an xpk workload on an xpk cluster."""
  cluster: str
  workload: str
  project: str
  zone: str
  tpu_type: str  # per slice, e.g. v5p-256
  docker_image: str  # where `image_commands` pushes and the workload pulls, e.g. gcr.io/PROJECT/unimodal-jax:TAG
  num_slices: int = 1
  provisioning: str = "on-demand"  # of the cluster's node pools; a member of PROVISIONING
  reservation: str = ""  # with provisioning='reservation'
  priority: str = "medium"
  max_restarts: int = 10  # JobSet restarts after a failure or preemption; each resumes from the newest checkpoint
  env: tuple[tuple[str, str], ...] = common.DEFAULT_ENV
  mount_bucket: str = ""  # a bucket every pod sees at /gcs/<bucket> (GCS FUSE CSI driver, attached by cluster)


def check(args: XpkArgs) -> None:
  """Raise LaunchError naming the flag when `args` cannot describe a launch."""
  common.check_name("cluster", args.cluster, max_len=40)
  common.check_name("workload", args.workload, max_len=40)  # xpk's own limit
  common.check_project_zone(args.project, args.zone)
  common.check_accelerator_type("tpu_type", args.tpu_type)
  common.check_num_slices(args.num_slices)
  common.check_bucket(args.mount_bucket)
  if not args.docker_image or any(c.isspace() for c in args.docker_image):
    raise LaunchError(f"--docker_image={args.docker_image!r}: expected an image reference such as "
                      f"gcr.io/PROJECT/unimodal-jax:TAG")
  if args.provisioning not in PROVISIONING:
    raise LaunchError(f"--provisioning={args.provisioning!r}: expected one of {', '.join(PROVISIONING)}")
  if (args.provisioning == "reservation") != bool(args.reservation):
    raise LaunchError("--reservation=NAME goes with --provisioning=reservation, and only with it")
  if args.priority not in PRIORITIES:
    raise LaunchError(f"--priority={args.priority!r}: expected one of {', '.join(PRIORITIES)}")
  if args.max_restarts < 0:
    raise LaunchError(f"--max_restarts={args.max_restarts}: expected >= 0")


def _where(args: XpkArgs) -> list[str]:
  return [f"--project={args.project}", f"--zone={args.zone}"]


def cluster_commands(args: XpkArgs) -> list[list[str]]:
  """Create (or resize) the GKE cluster with `num_slices` TPU node pools of `tpu_type`; with mount_bucket, attach
  the bucket to every workload at /gcs/<bucket> (GCS FUSE; the size is nominal, xpk asks for one)."""
  check(args)
  capacity = f"--reservation={args.reservation}" if args.reservation else f"--{args.provisioning}"
  fuse = ["--enable-gcsfuse-csi-driver"] if args.mount_bucket else []
  create = ["xpk", "cluster", "create", f"--cluster={args.cluster}", f"--tpu-type={args.tpu_type}",
            f"--num-slices={args.num_slices}", *_where(args), capacity, *fuse]
  if not args.mount_bucket:
    return [create]
  attach = ["xpk", "storage", "attach", args.mount_bucket.replace("_", "-").replace(".", "-"), "--type=gcsfuse",
            f"--bucket={args.mount_bucket}", f"--cluster={args.cluster}", "--auto-mount=true",
            f"--mount-point={common.mount_point(args.mount_bucket)}", "--readonly=false", "--size=1024",
            "--mount-options=implicit-dirs,rename-dir-limit=1000000", *_where(args)]
  return [create, attach]


def image_commands(args: XpkArgs, context: str = ".") -> list[list[str]]:
  """Build launch/Dockerfile from the repository root `context` and push it to args.docker_image."""
  check(args)
  dockerfile = os.path.normpath(os.path.join(context, DOCKERFILE))
  return [["docker", "build", "-f", dockerfile, "-t", args.docker_image, context],
          ["docker", "push", args.docker_image]]


def train_commands(args: XpkArgs, train_argv: Sequence[str]) -> list[list[str]]:
  """Submit `unimodal-train train_argv` as a workload: one pod per TPU host of every slice, all running it through
  launch/pod_train.sh, so that a preempted run restarts (up to max_restarts) and resumes."""
  check(args)
  command = common.env_command(args.env, ["bash", POD_TRAIN, *common.pod_train_argv(train_argv, args.num_slices)])
  return [["xpk", "workload", "create", f"--cluster={args.cluster}", f"--workload={args.workload}",
           f"--tpu-type={args.tpu_type}", f"--num-slices={args.num_slices}", f"--docker-image={args.docker_image}",
           f"--command={command}", f"--priority={args.priority}", f"--max-restarts={args.max_restarts}",
           *_where(args)]]


def region(zone: str) -> str:
  """xpk clusters are regional: us-east5-a -> us-east5."""
  return zone.rsplit("-", 1)[0]


def logs_commands(args: XpkArgs) -> list[list[str]]:
  """Follow the log of the workload's first pod (slice 0, host 0: process 0, the one that prints metrics)."""
  check(args)
  selector = (f"jobset.sigs.k8s.io/jobset-name={args.workload},jobset.sigs.k8s.io/job-index=0,"
              f"batch.kubernetes.io/job-completion-index=0")
  return [["gcloud", "container", "clusters", "get-credentials", args.cluster, f"--region={region(args.zone)}",
           f"--project={args.project}"],
          ["kubectl", "logs", "--follow", f"--selector={selector}", f"--container={CONTAINER}", "--tail=-1"]]


def delete_commands(args: XpkArgs) -> list[list[str]]:
  """Delete the workload (its pods get SIGTERM, then its TPUs go back to the cluster)."""
  check(args)
  return [["xpk", "workload", "delete", f"--cluster={args.cluster}", f"--workload={args.workload}",
           *_where(args), "--force"]]


def delete_cluster_commands(args: XpkArgs) -> list[list[str]]:
  check(args)
  return [["xpk", "cluster", "delete", f"--cluster={args.cluster}", *_where(args), "--force"]]


def up_commands(args: XpkArgs, train_argv: Sequence[str], context: str = ".") -> list[list[str]]:
  """Build and push the image, submit the workload, follow its log (the cluster must exist: cluster_commands)."""
  return [*image_commands(args, context), *train_commands(args, train_argv), *logs_commands(args)]
