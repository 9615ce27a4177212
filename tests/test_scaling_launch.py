"""The sweep launcher: retries and failure reports with stand-in commands, then a tiny sweep through the CLI that is
killed mid-run, relaunched (finished runs skipped, the killed one resumed), collected, fitted and plotted."""
import json
import os
import shlex
import signal
import subprocess
import sys
import time

import pytest

from unimodal_jax.cli import sweep as cli
from unimodal_jax.scaling import families, launch, plan

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SWEEP = os.path.join(os.path.dirname(sys.executable), "unimodal-sweep")
COUNTS = families.ParamCounts(1, 1, 2, 1, 2)


def fake_run(name, steps=4, depends_on="", branch_step=0):
  return plan.Run(name=name, variant="dense", size=0, budget=1.0, overrides=(), num_steps=steps, tokens=steps,
                  params=COUNTS, n=1, flops_per_token=6.0, run_flops=1.0, point_flops=1.0, depends_on=depends_on,
                  branch_step=branch_step)


def script_backend(code):
  """A backend whose 'training' is a Python snippet given the workdir (argument 2 of unimodal-train's)."""
  return lambda args: [sys.executable, "-c", code, args[1].removeprefix("--workdir=")]


MAKE_CHECKPOINTS = "import os, sys; [os.makedirs(f'{sys.argv[1]}/checkpoints/{s}') for s in (2, 4)]"


def test_a_failing_run_is_retried_once_then_reported_and_its_branches_cannot_start(tmp_path):
  runs = [fake_run("a"), fake_run("b", depends_on="a", branch_step=2), fake_run("c")]
  logs = []
  code = "import os, sys; sys.exit(0 if 'runs/c' in sys.argv[1] and os.makedirs(sys.argv[1] + '/checkpoints/4') " \
         "is None else 3)"
  states = launch.launch(runs, "cfg.py", str(tmp_path), script_backend(code), parallel=2, poll_s=0.05,
                         log=logs.append)
  assert states == {"a": "failed", "b": "failed", "c": "done"}
  assert launch.read_record(runs[0].workdir(str(tmp_path))) == {"attempts": 2, "returncode": 3}
  assert "a: exited with status 3 at step 0/4; retrying" in logs
  assert any(line.startswith("a: failed (exit status 3") for line in logs)
  assert "b: cannot start: a failed before step 2" in logs
  assert launch.run_state(runs[0], str(tmp_path)).state == "failed"


def test_branches_wait_for_their_checkpoint_and_done_runs_are_skipped(tmp_path):
  runs = [fake_run("a"), fake_run("b", depends_on="a", branch_step=2)]
  assert launch.run_state(runs[1], str(tmp_path)).state == "waiting"
  states = launch.launch(runs, "cfg.py", str(tmp_path), script_backend(MAKE_CHECKPOINTS), poll_s=0.05,
                         log=lambda _: None)
  assert states == {"a": "done", "b": "done"}
  logs = []
  launch.launch(runs, "cfg.py", str(tmp_path), script_backend("raise SystemExit(5)"), log=logs.append)
  assert logs == ["a: done; skipped", "b: done; skipped"]


def test_local_env_gives_each_run_one_cpu_device():
  env = launch.local_env({"XLA_FLAGS": "--xla_force_host_platform_device_count=8 --xla_cpu_foo=1", "A": "1"})
  assert env == {"XLA_FLAGS": "--xla_cpu_foo=1", "JAX_PLATFORMS": "cpu", "A": "1"}


def write_spec(tmp_path):
  with open(os.path.join(ROOT, "configs", "sweeps", "tiny.py")) as f:
    text = f.read()
  text = text.replace('"../tiny.py"', repr(os.path.join(ROOT, "configs", "tiny.py")))
  text = text.replace("s.budgets = (0.25, 0.375, 0.5)", "s.budgets = (0.25, 0.5)")
  path = tmp_path / "spec.py"
  path.write_text(text)
  return str(path)


def sweep(*args, **kwargs):
  return subprocess.run([SWEEP, *args], capture_output=True, text=True, timeout=900, **kwargs)


def test_dry_run_prints_the_commands_in_launch_order(tmp_path):
  spec, sweep_dir = write_spec(tmp_path), str(tmp_path / "sw")
  out = sweep("launch", "--spec", spec, "--sweep_dir", sweep_dir, "--dry_run")
  assert out.returncode == 0, out.stderr
  lines = out.stdout.splitlines()
  runs = plan.plan(plan.load_spec(spec))
  train = os.path.join(os.path.dirname(sys.executable), "unimodal-train")
  expected = []
  for r in launch.launch_order(runs):
    if r.depends_on:
      expected.append(f"# {r.name}: waits for {sweep_dir}/runs/{r.depends_on}/checkpoints/{r.branch_step}")
    expected.append(shlex.join([train, *r.train_args(os.path.join(ROOT, "configs", "tiny.py"), sweep_dir)]))
  assert lines == expected
  assert not os.path.exists(sweep_dir)  # nothing ran


def test_the_large_stable_runs_start_first():
  """On 2 cores the demo sweep's makespan is its three largest stable runs: they must not queue behind small runs."""
  runs = plan.plan(plan.load_spec(os.path.join(ROOT, "configs", "sweeps", "demo_cpu.py")))
  order = [r.name for r in launch.launch_order(runs)]
  assert order[:3] == ["image_s2_r4", "mixed_s2_r4", "text_s2_r4"]
  assert sorted(order) == sorted(r.name for r in runs)
  costs = [r.run_flops for r in launch.launch_order(runs)]
  assert costs == sorted(costs, reverse=True)


@pytest.mark.parametrize("command", ["plan", "launch", "status", "collect", "fit", "plot"])
def test_each_command_has_its_own_help(command, capsys):
  with pytest.raises(SystemExit) as exit_info:
    cli.main([command, "--help"])
  out = capsys.readouterr().out
  assert exit_info.value.code == 0 and f"usage: unimodal-sweep {command}" in out and "--sweep_dir" in out
  assert ("--dry_run" in out) == (command == "launch")


def test_tiny_sweep_through_the_cli_resumes_a_killed_run_and_fits_and_plots(tmp_path):
  spec, sweep_dir = write_spec(tmp_path), str(tmp_path / "sw")
  runs = {r.name: r for r in plan.plan(plan.load_spec(spec))}
  big = runs["dense_s1_r0.5"]
  launcher = subprocess.Popen([SWEEP, "launch", "--spec", spec, "--sweep_dir", sweep_dir, "--parallel", "2"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
  first = os.path.join(big.workdir(sweep_dir), "checkpoints", "32")
  deadline = time.time() + 600
  while not os.path.isdir(first) and launcher.poll() is None and time.time() < deadline:
    time.sleep(0.2)
  os.killpg(launcher.pid, signal.SIGKILL)  # the launcher and its training processes, mid-run
  launcher.wait()
  assert launch.run_state(big, sweep_dir).state == "partial"
  out = sweep("launch", "--spec", spec, "--sweep_dir", sweep_dir, "--parallel", "2")
  assert out.returncode == 0, out.stdout + out.stderr
  assert "4/4 runs done" in out.stdout
  log = open(os.path.join(big.workdir(sweep_dir), launch.LOG_FILE)).read()
  second = log.split("$ ")[-1]
  assert log.count("$ ") == 2 and "step 80/80" in second and "step 2/80:" not in second  # resumed, not restarted
  again = sweep("launch", "--spec", spec, "--sweep_dir", sweep_dir)
  assert again.returncode == 0 and all(f"{name}: done; skipped" in again.stdout for name in runs)
  assert "dense_s1_r0.5" in sweep("status", "--spec", spec, "--sweep_dir", sweep_dir).stdout

  out = sweep("collect", "--spec", spec, "--sweep_dir", sweep_dir)
  assert out.returncode == 0 and "4/4 points" in out.stdout, out.stdout + out.stderr
  results = json.load(open(os.path.join(sweep_dir, "results.json")))
  assert results["problems"] == {}
  assert all(p["eval_loss"] > 0 and p["tokens_text"] > 0 for p in results["points"])
  out = sweep("fit", "--sweep_dir", sweep_dir, "--bootstrap", "5")
  assert out.returncode == 0, out.stderr
  report = json.load(open(os.path.join(sweep_dir, "fits.json")))
  assert "at least 5 runs, got 4" in report["variants"]["dense"]["overall"]["error"]  # 4 points, 5 parameters
  out = sweep("plot", "--sweep_dir", sweep_dir)
  assert out.returncode == 0, out.stderr
  pngs = sorted(os.listdir(os.path.join(sweep_dir, "plots")))
  assert pngs == ["loss_vs_flops_dense.png", "loss_vs_size_dense.png"]
  assert all(os.path.getsize(os.path.join(sweep_dir, "plots", p)) > 1000 for p in pngs)
