"""Multi-host rehearsal: two JAX processes on 127.0.0.1 (4 fake devices each) train one 8-device mesh,
checkpoint with orbax (each process saving its own data-iterator state), resume, and end where a single
8-device process serving the same two data shards ends; a process that loses its peer exits in bounded time."""
import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np

from test_checkpointing import final_params
from test_model import load_config
from unimodal_jax.train import loop, metrics as metrics_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MESH = {"mesh.data": 2, "mesh.fsdp": 2, "mesh.tensor": 2}


def launch(workdir, steps):
  cmd = [sys.executable, os.path.join(REPO, "launch", "local_multihost.py"), "--num_processes=2",
         "--devices_per_process=4", "--timeout_s=600", "--", "--config", os.path.join(REPO, "configs", "tiny.py"),
         "--workdir", str(workdir), f"--config.train.num_steps={steps}", "--config.train.log_every=3",
         "--config.train.checkpoint_every=6", *[f"--config.{k}={v}" for k, v in MESH.items()]]
  out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900)
  assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
  return out.stdout


def test_two_processes_train_checkpoint_resume_and_match_one_process(tmp_path):
  workdir = tmp_path / "run"
  first = launch(workdir, 6)
  assert "[0] Run finished" in first and "[1] Run finished" not in first  # only process 0 reports
  second = launch(workdir, 12)
  assert "step 9/12:" in second and "step 3/12:" not in second  # resumed at step 6, not restarted

  rows = metrics_lib.read_metrics(str(workdir / "metrics.jsonl"))
  assert [r["step"] for r in rows] == [3, 6, 9, 12]  # written once, by process 0
  assert all(r["num_tokens"] > 0 and r["loss"] < 8 for r in rows)
  step_dir = workdir / "checkpoints" / "12"
  data_states = sorted(p.name for p in (step_dir / "data").glob("process_*.json"))
  assert data_states == ["process_0-of-2.json", "process_1-of-2.json"], data_states
  states = [json.loads((step_dir / "data" / n).read_text()) for n in data_states]
  assert states[0] != states[1]  # each process saved its own position in its own share

  # One process with the 8 devices and both data shards sees the same global batches.
  c = load_config("tiny")
  c.train.num_steps, c.train.log_every, c.data.num_shards = 12, 3, 2
  c.mesh.data, c.mesh.fsdp, c.mesh.tensor = 2, 2, 2
  loop.train(c, str(tmp_path / "single"))
  single, multi = final_params(str(tmp_path / "single"), 12), final_params(str(workdir), 12)
  assert single.keys() == multi.keys()
  for key in single:  # same math; collectives across processes may add in another order, and Adam's first
    # steps scale a near-zero gradient's rounding up to ~lr: a few embedding rows differ by ~1e-6
    np.testing.assert_allclose(multi[key], single[key], rtol=1e-5, atol=1e-5, err_msg=key)
  single_rows = metrics_lib.read_metrics(str(tmp_path / "single" / "metrics.jsonl"))
  np.testing.assert_allclose([r["loss"] for r in single_rows], [r["loss"] for r in rows], rtol=1e-5)


def test_a_process_that_loses_its_peer_exits_with_an_error_in_bounded_time(tmp_path):
  port = 20000 + os.getpid() % 20000
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=4")
  procs = [subprocess.Popen(
      [sys.executable, "-m", "unimodal_jax.cli.train", "--config", os.path.join(REPO, "configs", "tiny.py"),
       "--workdir", str(tmp_path / "run"), "--config.train.num_steps=100000", "--config.train.log_every=1",
       "--config.train.checkpoint_every=100000", "--distributed=explicit", f"--coordinator_address=127.0.0.1:{port}",
       "--num_processes=2", f"--process_id={i}", "--heartbeat_timeout_s=10"],
      cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(2)]
  try:
    for line in procs[0].stdout:
      if line.startswith("step 3/"):
        break
    else:
      raise AssertionError("process 0 ended before training")
    procs[1].send_signal(signal.SIGKILL)
    t0 = time.monotonic()
    rest, _ = procs[0].communicate(timeout=120)
    code, waited = procs[0].returncode, time.monotonic() - t0
  finally:
    for p in procs:
      p.kill()
  assert code != 0, rest[-2000:]
  assert waited < 60, f"process 0 took {waited:.0f} s to notice its peer died"
  assert "stopped sending heartbeats" in rest and "another task died" in rest, rest[-3000:]
