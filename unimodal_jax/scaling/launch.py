"""Run a planned sweep: each run's state from its workdir (local or gs://, through etils.epath), and a scheduler that
starts runs whose checkpoints they branch from exist, a few at a time, through a backend (a function from
unimodal-train's arguments to a command).

Idempotent: a run whose last checkpoint is its final step is done and skipped; an interrupted one is started again
and unimodal-train resumes it from its workdir; a failing one is retried `retries` times, then reported.
"""
import dataclasses
import json
import os
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Callable

from etils import epath

from unimodal_jax.scaling import plan as plan_lib

LAUNCH_RECORD = "launch.json"  # per workdir: attempts and the last exit status
LOG_FILE = "train.log"
Backend = Callable[[list[str]], list[str]]


def local_backend(train_args: list[str]) -> list[str]:
  """unimodal-train from the bin directory of this Python (the same environment)."""
  return [os.path.join(os.path.dirname(sys.executable), "unimodal-train"), *train_args]


def local_env(environ=None) -> dict:
  """One CPU device per run: no forced host device count, JAX on CPU."""
  env = dict(os.environ if environ is None else environ)
  flags = re.sub(r"--xla_force_host_platform_device_count=\S+", "", env.get("XLA_FLAGS", "")).split()
  env["XLA_FLAGS"] = " ".join(flags)
  env["JAX_PLATFORMS"] = "cpu"
  return env


def default_parallelism() -> int:
  """Runs at once on this machine: one per core, each a single-device XLA process."""
  return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


def checkpoint_steps(workdir: str) -> list[int]:
  path = epath.Path(workdir) / "checkpoints"
  if not path.is_dir():
    return []
  return sorted(int(d.name) for d in path.iterdir() if d.name.isdigit())


def read_record(workdir: str) -> dict:
  path = epath.Path(workdir) / LAUNCH_RECORD
  if not path.exists():
    return {"attempts": 0, "returncode": None}
  return json.loads(path.read_text())


def write_record(workdir: str, record: dict):
  epath.Path(workdir).mkdir(parents=True, exist_ok=True)
  (epath.Path(workdir) / LAUNCH_RECORD).write_text(json.dumps(record))


@dataclasses.dataclass(frozen=True)
class RunState:
  name: str
  state: str  # done | failed | partial | waiting | ready
  step: int
  num_steps: int
  attempts: int
  detail: str = ""


def run_state(run: plan_lib.Run, sweep_dir: str, retries: int = 1) -> RunState:
  workdir = run.workdir(sweep_dir)
  steps = checkpoint_steps(workdir)
  step = steps[-1] if steps else 0
  record = read_record(workdir)
  attempts, rc = record["attempts"], record["returncode"]
  if step >= run.num_steps:
    return RunState(run.name, "done", step, run.num_steps, attempts)
  if rc not in (None, 0) and attempts > retries:
    return RunState(run.name, "failed", step, run.num_steps, attempts, f"exit status {rc}, see {workdir}/{LOG_FILE}")
  wait = run.wait_for(sweep_dir)
  if wait and not epath.Path(wait).is_dir():
    return RunState(run.name, "waiting", step, run.num_steps, attempts, f"for {wait}")
  return RunState(run.name, "partial" if step else "ready", step, run.num_steps, attempts)


def status_table(runs, sweep_dir: str) -> str:
  lines = [f"{'run':28s} {'state':8s} {'step':>13s} {'tries':>5s}  detail"]
  for s in (run_state(r, sweep_dir) for r in runs):
    lines.append(f"{s.name:28s} {s.state:8s} {f'{s.step}/{s.num_steps}':>13s} {s.attempts:5d}  {s.detail}")
  return "\n".join(lines)


def launch_order(runs) -> list[plan_lib.Run]:
  """Costliest first (longest-processing-time scheduling): the large stable runs, which their branches wait for, do
  not queue behind small ones. Among equal costs, plan order."""
  return sorted(runs, key=lambda r: -r.run_flops)


def commands(runs, base_config: str, sweep_dir: str, backend: Backend) -> list[tuple[plan_lib.Run, list[str]]]:
  return [(r, backend(r.train_args(base_config, sweep_dir))) for r in launch_order(runs)]


def dry_run(runs, base_config: str, sweep_dir: str, backend: Backend) -> str:
  """Every command in launch order; a branch's line says which checkpoint it waits for."""
  lines = []
  for run, command in commands(runs, base_config, sweep_dir, backend):
    state = run_state(run, sweep_dir)
    if state.state in ("done", "failed"):
      lines.append(f"# {run.name}: {state.state}, not started")
      continue
    if run.depends_on:
      lines.append(f"# {run.name}: waits for {run.wait_for(sweep_dir)}")
    lines.append(shlex.join(command))
  return "\n".join(lines)


def blocked(run, sweep_dir: str, finished: set, failed: set) -> str:
  """Why a waiting run can never start: its parent ended without the checkpoint."""
  if run.depends_on in failed:
    return f"{run.depends_on} failed before step {run.branch_step}"
  if run.depends_on in finished and not os.path.isdir(run.wait_for(sweep_dir)):
    return f"{run.depends_on} finished without checkpoint {run.branch_step} (was it kept?)"
  return ""


def launch(runs, base_config: str, sweep_dir: str, backend: Backend = local_backend, *, parallel: int = 1,
           retries: int = 1, env: dict | None = None, poll_s: float = 1.0, log=print) -> dict:
  """Run every run that is not done, the costliest ready one first (launch_order); returns {run name: final state}.
  Blocks until all end."""
  env = local_env() if env is None else env
  pending = {r.name: r for r in launch_order(runs)}
  running, finished, failed = {}, set(), set()
  for r in runs:
    s = run_state(r, sweep_dir, retries)
    if s.state == "done":
      log(f"{r.name}: done; skipped")
      finished.add(r.name)
      del pending[r.name]
    else:  # each launch gives a run 1 + `retries` attempts, whatever earlier launches (or a killed one) spent
      if s.state == "failed":
        log(f"{r.name}: failed before ({s.detail}); trying again")
      if s.attempts:
        write_record(r.workdir(sweep_dir), {"attempts": 0, "returncode": None})
  while pending or running:
    for name, (proc, logf) in list(running.items()):
      if proc.poll() is None:
        continue
      logf.close()
      del running[name]
      run = {r.name: r for r in runs}[name]
      record = read_record(run.workdir(sweep_dir))
      record["returncode"] = proc.returncode
      write_record(run.workdir(sweep_dir), record)
      state = run_state(run, sweep_dir, retries)
      if state.state == "done":
        finished.add(name)
        log(f"{name}: done")
      elif state.state == "failed":
        failed.add(name)
        log(f"{name}: failed ({state.detail})")
      else:
        pending[name] = run
        log(f"{name}: exited with status {proc.returncode} at step {state.step}/{run.num_steps}; retrying")
    for name, run in list(pending.items()):
      if len(running) >= parallel:
        break
      why = blocked(run, sweep_dir, finished, failed) if run.depends_on else ""
      if why:
        failed.add(name)
        del pending[name]
        log(f"{name}: cannot start: {why}")
        continue
      if run_state(run, sweep_dir, retries).state == "waiting":
        continue
      workdir = run.workdir(sweep_dir)
      record = read_record(workdir)
      record["attempts"] += 1
      write_record(workdir, record)
      command = backend(run.train_args(base_config, sweep_dir))
      logf = open(os.path.join(workdir, LOG_FILE), "a")
      logf.write(f"$ {shlex.join(command)}\n")
      logf.flush()
      running[name] = (subprocess.Popen(command, stdout=logf, stderr=subprocess.STDOUT, env=env), logf)
      del pending[name]
      log(f"{name}: started (attempt {record['attempts']})")
    if running:
      time.sleep(poll_s)
    elif pending and all(run_state(r, sweep_dir, retries).state == "waiting" for r in pending.values()):
      for name in list(pending):  # nothing runs that could write what they wait for
        failed.add(name)
        log(f"{name}: cannot start: {pending.pop(name).wait_for(sweep_dir)} never appeared")
  return {r.name: ("done" if r.name in finished else "failed") for r in runs}


def prepare_shared_data(runs, base_config: str, sweep_dir: str, log=print):
  """Build the embedded dataset once in <sweep_dir>/data for runs that share it (they would race to build it)."""
  from unimodal_jax.config import load_config_file  # here: plan and status need not import JAX
  from unimodal_jax.data import embedded
  shared = [r for r in runs if r.shared_data]
  if not shared:
    return
  config = load_config_file(base_config)
  plan_lib.apply_overrides(config, shared[0].overrides)
  log(f"preparing the embedded dataset in {plan_lib.data_dir(sweep_dir)}")
  embedded.prepare(config, plan_lib.data_dir(sweep_dir))
