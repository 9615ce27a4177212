"""What the TPU VM and GKE launchers share: name and flag checks, the `unimodal-train` command line every pod worker
runs, and printing or running a list of commands. Nothing here reaches a cloud by itself."""
import re
import shlex
import subprocess
import sys
from collections.abc import Sequence

# GCP resource names (queued resources, TPU nodes, GKE clusters, xpk workloads).
NAME = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
PROJECT = re.compile(r"[a-z][-a-z0-9]{4,28}[a-z0-9]")
ZONE = re.compile(r"[a-z]+-[a-z]+[0-9]+-[a-z]")
BUCKET = re.compile(r"[a-z0-9][-a-z0-9_.]{1,61}[a-z0-9]")  # a Cloud Storage bucket name, without gs://
ENV_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# Cloud TPU accelerator types: TensorCores for v4 and v5p (two per chip), chips for v5e (v5litepod) and v6e.
ACCELERATOR_TYPE = re.compile(r"(v4|v5p|v5litepod|v6e)-([1-9][0-9]*)")
# Listing the platforms makes a TPU that fails to initialise an error on that worker, instead of JAX falling back
# to the host CPU and the job training there; cpu stays available for host-side arrays.
DEFAULT_ENV = (("JAX_PLATFORMS", "tpu,cpu"),)


class LaunchError(ValueError):
  """A launch that cannot work as asked; the message names the flag and what it expects."""


def check_name(flag: str, value: str, max_len: int = 63) -> None:
  if not value:
    raise LaunchError(f"--{flag} is required")
  if not NAME.fullmatch(value) or len(value) > max_len:
    raise LaunchError(f"--{flag}={value!r}: expected lowercase letters, digits and '-', starting with a letter, "
                      f"not ending with '-', at most {max_len} characters")


def check_project_zone(project: str, zone: str) -> None:
  for flag, value in (("project", project), ("zone", zone)):
    if not value:
      raise LaunchError(f"--{flag} is required")
  if not PROJECT.fullmatch(project or ""):
    raise LaunchError(f"--project={project!r}: expected a GCP project id (6-30 lowercase letters, digits, '-')")
  if not ZONE.fullmatch(zone or ""):
    raise LaunchError(f"--zone={zone!r}: expected a GCP zone such as us-east5-a")


def check_accelerator_type(flag: str, value: str) -> str:
  """The generation of a Cloud TPU accelerator type such as v5p-256 (v4, v5p, v5litepod or v6e)."""
  match = ACCELERATOR_TYPE.fullmatch(value or "")
  if match:
    return match.group(1)
  hint = f" (Cloud TPU names v5e slices v5litepod-N: --{flag}=v5litepod-{value[4:]})" if value.startswith("v5e-") \
      else ""
  raise LaunchError(f"--{flag}={value!r}: expected an accelerator type <v4|v5p|v5litepod|v6e>-<N>, "
                    f"e.g. v5p-256{hint}")


def check_bucket(value: str) -> None:
  if value and not BUCKET.fullmatch(value):
    raise LaunchError(f"--mount_bucket={value!r}: expected a bucket name such as my-bucket (no gs://)")


def mount_point(bucket: str) -> str:
  """Where a bucket is mounted on workers and pods (Cloud Storage FUSE): paths under it are shared by all hosts."""
  return f"/gcs/{bucket}"


def check_num_slices(num_slices: int) -> None:
  if num_slices < 1:
    raise LaunchError(f"--num_slices={num_slices}: expected >= 1")


def parse_env(items: Sequence[str]) -> tuple[tuple[str, str], ...]:
  """['KEY=VALUE', ...] -> ((KEY, VALUE), ...), the launcher's defaults first (a later KEY wins)."""
  env = dict(DEFAULT_ENV)
  for item in items:
    key, sep, value = item.partition("=")
    if not sep or not ENV_KEY.fullmatch(key):
      raise LaunchError(f"--env={item!r}: expected KEY=VALUE with KEY a shell variable name")
    env[key] = value
  return tuple(env.items())


def flag_value(argv: Sequence[str], name: str) -> str | None:
  """The value of `--name=V` or `--name V` in an absl argument list (the last one wins), else None."""
  value = None
  for i, arg in enumerate(argv):
    if arg.startswith(f"--{name}="):
      value = arg.split("=", 1)[1]
    elif arg == f"--{name}" and i + 1 < len(argv):
      value = argv[i + 1]
  return value


def pod_train_argv(train_argv: Sequence[str], num_slices: int) -> list[str]:
  """unimodal-train's arguments as every worker of a pod runs them: one process per host joining the cluster the
  TPU runtime describes (--distributed=auto) and, on several slices, data parallelism across them unless the
  arguments choose another mesh.dcn_* layout."""
  argv = list(train_argv)
  for required in ("config", "workdir"):
    if flag_value(argv, required) is None:
      raise LaunchError(f"unimodal-train needs --{required}: pass it after '--', e.g. -- "
                        f"--config=configs/chameleon_7b.py --workdir=gs://BUCKET/runs/chameleon_7b")
  distributed = flag_value(argv, "distributed")
  if distributed not in (None, "auto"):
    raise LaunchError(f"--distributed={distributed}: a pod runs one process per host, found by "
                      f"--distributed=auto; drop the flag")
  if distributed is None:
    argv.append("--distributed=auto")
  if num_slices > 1 and not any(a.startswith("--config.mesh.dcn_") for a in argv):
    argv.append(f"--config.mesh.dcn_data={num_slices}")
  return argv


def env_command(env: Sequence[tuple[str, str]], argv: Sequence[str]) -> str:
  """A shell command line running `argv` with `env` set: `env K=V ... argv`."""
  return shlex.join(["env", *(f"{k}={v}" for k, v in env), *argv])


def format_commands(commands: Sequence[Sequence[str]]) -> str:
  """One shell-quoted line per command: what --dry_run prints, and what a shell would run."""
  return "\n".join(shlex.join(command) for command in commands)


def run_commands(commands: Sequence[Sequence[str]], dry_run: bool) -> int:
  """Print the commands (dry run) or run them in order, output streaming through; stop at the first that fails and
  return its exit status."""
  if dry_run:
    print(format_commands(commands), flush=True)
    return 0
  for command in commands:
    print(f"+ {shlex.join(command)}", file=sys.stderr, flush=True)
    try:
      code = subprocess.run(list(command), check=False).returncode
    except FileNotFoundError:
      print(f"{command[0]}: not found on PATH (docs/launch.md lists what to install)", file=sys.stderr)
      return 127
    if code:
      return code
  return 0
