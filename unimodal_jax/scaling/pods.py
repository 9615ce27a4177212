"""Sweep runs on TPU pods: each run becomes one launch of its own (one slice per run) through unimodal_jax/launch/
(tpu_vm: a queued resource per run, training detached; xpk: a workload per run on an existing cluster).

Pods do not report back to this process: `submit` starts every run that is not done, not submitted before and not
waiting for its parent's checkpoint, records the submission in the run's workdir (gs://, read through etils.epath),
and says which runs wait; `unimodal-sweep launch` again starts those once their checkpoints exist.
"""
import dataclasses
import os
import re
import time

from unimodal_jax.launch import common, tpu_vm, xpk
from unimodal_jax.launch.common import LaunchError
from unimodal_jax.scaling import launch as launch_lib

BACKENDS = ("tpu_vm", "xpk")


def resource_name(prefix: str, run_name: str) -> str:
  """A GCP resource name for one run: dense_s1_r0.25 -> <prefix>-dense-s1-r0-25."""
  return f"{prefix}-{re.sub(r'[^a-z0-9]+', '-', run_name.lower()).strip('-')}"


def run_commands(backend: str, args, run, base_config: str, sweep_dir: str) -> list[list[str]]:
  """The commands that start `run` on its own slice: tpu_vm creates the queued resource, sets up its workers and
  trains detached; xpk submits a workload (the cluster and the image exist: unimodal-launch-xpk cluster / image)."""
  train_args = run.train_args(base_config, sweep_dir)
  if backend == "tpu_vm":
    one = dataclasses.replace(args, name=resource_name(args.name, run.name), detach=True)
    return tpu_vm.up_commands(one, train_args)
  if backend == "xpk":
    return xpk.train_commands(dataclasses.replace(args, workload=resource_name(args.workload, run.name)), train_args)
  raise LaunchError(f"--backend={backend!r}: expected one of local, {', '.join(BACKENDS)}")


def check_runs(runs, sweep_dir: str):
  if "://" not in sweep_dir:
    raise LaunchError(f"--sweep_dir={sweep_dir!r}: pod runs write where every host and this machine can read; give "
                      f"a bucket path such as gs://BUCKET/sweeps/NAME")
  if any(r.shared_data for r in runs):
    raise LaunchError("the spec's runs share an embedded dataset built on this machine; on pods set data.dir (or a "
                      "tokenized data source) in the spec's overrides")


def dry_run(backend: str, args, runs, base_config: str, sweep_dir: str) -> str:
  """Every run's commands in launch order; a branch's block says which checkpoint it waits for."""
  lines = []
  for run in runs:
    state = launch_lib.run_state(run, sweep_dir)
    if state.state in ("done", "failed"):
      lines.append(f"# {run.name}: {state.state}, not started")
      continue
    if run.depends_on:
      lines.append(f"# {run.name}: waits for {run.wait_for(sweep_dir)}")
    lines.append(common.format_commands(run_commands(backend, args, run, base_config, sweep_dir)))
  return "\n".join(lines)


def submit(backend: str, args, runs, base_config: str, sweep_dir: str, log=print) -> dict:
  """Start every run that can start; returns {run name: done | submitted | waiting | failed}."""
  out = {}
  for run in runs:
    state, record = launch_lib.run_state(run, sweep_dir), launch_lib.read_record(run.workdir(sweep_dir))
    if state.state == "done":
      out[run.name] = "done"
    elif record.get("submitted"):
      out[run.name] = "submitted"
      log(f"{run.name}: submitted at {record['submitted']}, at step {state.step}/{run.num_steps}")
    elif state.state == "waiting":
      out[run.name] = "waiting"
      log(f"{run.name}: waits {state.detail}; run launch again once it exists")
    else:
      code = common.run_commands(run_commands(backend, args, run, base_config, sweep_dir), dry_run=False)
      out[run.name] = "failed" if code else "submitted"
      if not code:
        launch_lib.write_record(run.workdir(sweep_dir), {**record, "submitted": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                                              time.gmtime())})
      log(f"{run.name}: " + (f"a launch command failed (exit status {code})" if code else "submitted"))
  return out


def pod_base_config(base_config: str) -> str:
  """The spec's base config as the hosts see it: relative to the repository root (configs/ is copied there)."""
  path = os.path.relpath(base_config)
  if path.startswith(".."):
    raise LaunchError(f"base_config {base_config} is outside this directory; run from the repository root so the "
                      f"hosts find it under configs/")
  return path
