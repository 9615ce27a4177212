"""Cloud TPU VMs through queued resources: the gcloud commands that create a slice (or several, for multislice),
install the package on every worker, run `unimodal-train` on all of them, follow the log, stop and delete.

One slice is node `name` of queued resource `name` (`gcloud compute tpus tpu-vm ssh|scp --worker=all`); N slices are
nodes `name-0` ... `name-{N-1}` (`--node-count`/`--node-prefix`; `queued-resources ssh|scp --node=all --worker=all`),
whose runtime gives every worker its MEGASCALE_* settings (slice id, coordinator), read by libtpu and by
`jax.distributed.initialize()`.
"""
import dataclasses
import os
import re
import shlex
from collections.abc import Sequence

from unimodal_jax.launch import common
from unimodal_jax.launch.common import LaunchError

# The TPU software version Cloud TPU recommends per generation for JAX (cloud.google.com/tpu/docs/runtimes).
RUNTIME_VERSIONS = {"v4": "tpu-ubuntu2204-base", "v5p": "v2-alpha-tpuv5", "v5litepod": "v2-alpha-tpuv5-lite",
                    "v6e": "v2-alpha-tpuv6e"}
# Queued-resource capacity: flags of `queued-resources create`; best-effort exists only in gcloud alpha.
PROVISIONING = {"on-demand": (), "spot": ("--spot",), "reserved": ("--reserved",), "best-effort": ("--best-effort",)}
VENV = "unimodal-venv"  # in each worker's home directory, where the copies land and unimodal-train runs
LOG = "unimodal-train.log"  # in the home directory of every worker
PID = "unimodal-train.pid"  # beside it: the process stop_commands signals
POLL_S = 30
WHEEL = re.compile(r"unimodal_jax-[A-Za-z0-9_.+]+-py3-none-any\.whl")  # what `pip wheel` names this package


@dataclasses.dataclass(frozen=True)
class TpuVmArgs:
  """One training job on TPU VM slices. Exactly one of `wheel` (a local file) or `package` (a pip requirement)."""
  name: str  # the queued resource; its node (one slice) or node prefix (several)
  project: str
  zone: str
  accelerator_type: str  # per slice, e.g. v5p-256
  num_slices: int = 1
  provisioning: str = "on-demand"  # a key of PROVISIONING
  runtime_version: str = ""  # "" = RUNTIME_VERSIONS for the generation
  wheel: str = ""  # a local unimodal_jax wheel, copied to every worker and installed with the tpu extra
  package: str = ""  # or a pip requirement every worker installs, e.g. 'unimodal_jax[tpu] @ git+https://...'
  copy: tuple[str, ...] = ("configs",)  # local paths copied into every worker's home (unimodal-train's cwd)
  env: tuple[tuple[str, str], ...] = common.DEFAULT_ENV  # set for unimodal-train on every worker
  python: str = "3.12"  # the workers' venv Python (the TPU images ship 3.10; uv fetches this one)
  mount_bucket: str = ""  # a bucket mounted at /gcs/<bucket> on every worker (Cloud Storage FUSE)
  detach: bool = False  # train in the background (nohup); follow with logs_commands


def check(args: TpuVmArgs) -> None:
  """Raise LaunchError naming the flag when `args` cannot describe a launch."""
  common.check_name("name", args.name, max_len=50)  # room for the node suffix -N
  common.check_project_zone(args.project, args.zone)
  common.check_accelerator_type("accelerator_type", args.accelerator_type)
  common.check_num_slices(args.num_slices)
  common.check_bucket(args.mount_bucket)
  if args.provisioning not in PROVISIONING:
    raise LaunchError(f"--provisioning={args.provisioning!r}: expected one of {', '.join(PROVISIONING)}")
  if bool(args.wheel) == bool(args.package):
    raise LaunchError("give exactly one of --wheel (a local unimodal_jax-*.whl, e.g. from `pip wheel --no-deps "
                      "-w dist .`) or --package (a pip requirement every worker can install)")
  if args.wheel and not WHEEL.fullmatch(os.path.basename(args.wheel)):
    raise LaunchError(f"--wheel={args.wheel!r}: expected a wheel named like unimodal_jax-0.1.0-py3-none-any.whl")


def runtime_version(args: TpuVmArgs) -> str:
  return args.runtime_version or RUNTIME_VERSIONS[common.check_accelerator_type("accelerator_type",
                                                                                args.accelerator_type)]


def _where(args: TpuVmArgs) -> list[str]:
  return [f"--project={args.project}", f"--zone={args.zone}"]


def _ssh(args: TpuVmArgs, remote: str, all_workers: bool = True) -> list[str]:
  """gcloud ssh running `remote` (a shell command line) on every worker of every slice, or on worker 0 of slice 0."""
  workers = "all" if all_workers else "0"
  if args.num_slices == 1:
    return ["gcloud", "compute", "tpus", "tpu-vm", "ssh", args.name, *_where(args), f"--worker={workers}",
            f"--command={remote}"]
  return ["gcloud", "compute", "tpus", "queued-resources", "ssh", args.name, *_where(args),
          f"--node={'all' if all_workers else '0'}", f"--worker={workers}", f"--command={remote}"]


def _scp(args: TpuVmArgs, sources: Sequence[str]) -> list[str]:
  """gcloud scp of local `sources` into the home directory of every worker of every slice."""
  if args.num_slices == 1:
    return ["gcloud", "compute", "tpus", "tpu-vm", "scp", "--recurse", *sources, f"{args.name}:", *_where(args),
            "--worker=all"]
  return ["gcloud", "compute", "tpus", "queued-resources", "scp", "--recurse", *sources, f"{args.name}:",
          *_where(args), "--node=all", "--worker=all"]


def create_commands(args: TpuVmArgs) -> list[list[str]]:
  """Queue the slice(s), then wait until they are ACTIVE (fail if the request FAILED or was SUSPENDED)."""
  check(args)
  alpha = ["alpha"] if args.provisioning == "best-effort" else []
  nodes = ([f"--node-id={args.name}"] if args.num_slices == 1 else
           [f"--node-count={args.num_slices}", f"--node-prefix={args.name}"])
  create = ["gcloud", *alpha, "compute", "tpus", "queued-resources", "create", args.name, *_where(args),
            f"--accelerator-type={args.accelerator_type}", f"--runtime-version={runtime_version(args)}", *nodes,
            *PROVISIONING[args.provisioning]]
  describe = (f"gcloud compute tpus queued-resources describe {args.name} --project={args.project} "
              f"--zone={args.zone} --format=\"value(state.state)\"")
  wait = (f"while :; do state=$({describe}) || exit 1; echo \"queued resource {args.name}: $state\"; "
          f"case \"$state\" in ACTIVE) exit 0;; FAILED|SUSPENDED) exit 1;; esac; sleep {POLL_S}; done")
  return [create, ["bash", "-c", wait]]


def _install(args: TpuVmArgs) -> str:
  """Shell run on every worker: uv, a venv with args.python, and the package with the tpu extra (jax[tpu])."""
  pip = f"{VENV}/bin/pip install -q"
  if args.wheel:
    wheel = os.path.basename(args.wheel)  # a file name check() allows: no quoting needed but for the brackets
    # --force-reinstall: a rebuilt wheel of the same version would otherwise count as installed
    package = f"{pip} \"{wheel}[tpu]\" && {pip} --force-reinstall --no-deps {wheel}"
  else:
    package = f"{pip} {shlex.quote(args.package)}"
  return (f"[ -x ~/.local/bin/uv ] || curl -LsSf https://astral.sh/uv/install.sh | sh; "
          f"[ -x {VENV}/bin/python ] || ~/.local/bin/uv venv --seed --python {shlex.quote(args.python)} {VENV}; "
          f"{package}")


def _mount(bucket: str) -> str:
  """Shell run on every worker: Cloud Storage FUSE from Google's apt repository, `bucket` mounted at /gcs/<bucket>.
  --rename-dir-limit lets orbax rename its temporary checkpoint directories (on a flat bucket, object by object)."""
  where = common.mount_point(bucket)
  apt = "sudo apt-get -o DPkg::Lock::Timeout=600 -q"
  return (f"command -v gcsfuse > /dev/null || {{ echo \"deb [signed-by=/usr/share/keyrings/cloud.google.asc] "
          f"https://packages.cloud.google.com/apt gcsfuse-$(lsb_release -c -s) main\" | sudo tee "
          f"/etc/apt/sources.list.d/gcsfuse.list > /dev/null && curl -fsSL "
          f"https://packages.cloud.google.com/apt/doc/apt-key.gpg | sudo tee /usr/share/keyrings/cloud.google.asc "
          f"> /dev/null && {apt} update && {apt} install -y gcsfuse; }}; sudo mkdir -p {where} && sudo chown "
          f"$(id -u):$(id -g) {where}; mountpoint -q {where} || gcsfuse --implicit-dirs --rename-dir-limit=1000000 "
          f"{bucket} {where}; ")


def setup_commands(args: TpuVmArgs) -> list[list[str]]:
  """Copy the wheel and `args.copy` (configs) to every worker, then install the package there (and mount
  args.mount_bucket)."""
  check(args)
  sources = [*args.copy, *([args.wheel] if args.wheel else [])]
  mount = _mount(args.mount_bucket) if args.mount_bucket else ""
  return [*([_scp(args, sources)] if sources else []), _ssh(args, f"set -e; {mount}{_install(args)}")]


def train_commands(args: TpuVmArgs, train_argv: Sequence[str]) -> list[list[str]]:
  """`unimodal-train train_argv` on every worker of every slice at once, from the home directory, its output in
  ~/unimodal-train.log and its pid in ~/unimodal-train.pid there; attached (output streams here until the run
  ends) or detached (args.detach)."""
  check(args)
  run = common.env_command(args.env, [f"{VENV}/bin/unimodal-train", *common.pod_train_argv(train_argv,
                                                                                          args.num_slices)])
  if args.detach:
    remote = f"cd ~ && {{ setsid nohup {run} >> {LOG} 2>&1 < /dev/null & echo $! > {PID}; }}"
  else:
    remote = f"set -o pipefail; cd ~ && {{ {run} & echo $! > {PID}; wait $!; }} 2>&1 | tee -a {LOG}"
  return [_ssh(args, remote)]


def logs_commands(args: TpuVmArgs) -> list[list[str]]:
  """Follow the training log of worker 0 (of slice 0), which holds process 0's metrics lines."""
  check(args)
  return [_ssh(args, f"tail -n 200 -F {LOG}", all_workers=False)]


def stop_commands(args: TpuVmArgs) -> list[list[str]]:
  """SIGTERM to unimodal-train on every worker: it saves a checkpoint at the next step boundary and exits 0
  (docs/training.md); a rerun with the same --workdir resumes there."""
  check(args)
  # the pid file is checked against the process's command line: a stale pid may belong to something else now
  return [_ssh(args, f"pid=$(cat {PID} 2>/dev/null) && grep -qa unimodal-train /proc/$pid/cmdline && "
                     f"kill -TERM $pid; true")]


def delete_commands(args: TpuVmArgs) -> list[list[str]]:
  """Delete the queued resource and its nodes (everything on the workers' disks goes with them)."""
  check(args)
  return [["gcloud", "compute", "tpus", "queued-resources", "delete", args.name, *_where(args), "--force",
           "--quiet"]]


def up_commands(args: TpuVmArgs, train_argv: Sequence[str]) -> list[list[str]]:
  """From nothing to a running job: create and wait, set up every worker, train."""
  return [*create_commands(args), *setup_commands(args), *train_commands(args, train_argv)]
