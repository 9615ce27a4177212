"""Multi-host rehearsal: two JAX processes on 127.0.0.1 (4 fake devices each) train one 8-device mesh,
checkpoint with orbax (each process saving its own data-iterator state) and resume."""
import json
import os
import subprocess
import sys

from unimodal_jax.train import metrics as metrics_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def launch(workdir, steps):
  cmd = [sys.executable, os.path.join(REPO, "launch", "local_multihost.py"), "--num_processes=2",
         "--devices_per_process=4", "--timeout_s=600", "--", "--config", os.path.join(REPO, "configs", "tiny.py"),
         "--workdir", str(workdir), f"--config.train.num_steps={steps}", "--config.train.log_every=3",
         "--config.train.checkpoint_every=6", "--config.mesh.data=2", "--config.mesh.fsdp=2",
         "--config.mesh.tensor=2"]
  out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900)
  assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
  return out.stdout


def test_two_processes_train_checkpoint_and_resume(tmp_path):
  workdir = tmp_path / "run"
  first = launch(workdir, 6)
  assert "[0] Run finished" in first and "[1] Run finished" not in first  # only process 0 reports
  second = launch(workdir, 12)
  assert "step 9:" in second and "step 3:" not in second  # resumed at step 6, not restarted

  rows = metrics_lib.read_metrics(str(workdir / "metrics.jsonl"))
  assert [r["step"] for r in rows] == [3, 6, 9, 12]  # written once, by process 0
  assert all(r["num_tokens"] > 0 and r["loss"] < 8 for r in rows)
  step_dir = workdir / "checkpoints" / "12"
  data_states = sorted(p.name for p in (step_dir / "data").glob("process_*.json"))
  assert data_states == ["process_0-of-2.json", "process_1-of-2.json"], data_states
  states = [json.loads((step_dir / "data" / n).read_text()) for n in data_states]
  assert states[0] != states[1]  # each process saved its own position in its own share
