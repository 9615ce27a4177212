"""The README's commands: the demo trains end to end through `unimodal-train`; CI runs the test command."""
import os
import re
import subprocess
import sys

from unimodal_jax.train import metrics as metrics_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def readme_commands():
  with open(os.path.join(REPO, "README.md")) as f:
    return re.findall(r"```bash\n(.+?)\n```", f.read())[:2]


def test_ci_runs_the_readme_test_command():
  with open(os.path.join(REPO, ".ci", "run")) as f:
    assert readme_commands()[1] in f.read().splitlines()


def test_readme_demo_command_trains_and_writes_its_outputs(tmp_path):
  demo = readme_commands()[0].split("&& ")[-1]  # the part after the virtualenv set-up
  program, *args = demo.split()
  assert program == ".venv/bin/unimodal-train"
  args = [a for a in args if not a.startswith("runs/")]
  assert args[-1] == "--workdir"
  workdir = tmp_path / "run"
  steps = 40
  cmd = [os.path.join(os.path.dirname(sys.executable), "unimodal-train"), *args, str(workdir),
         f"--config.train.num_steps={steps}", "--config.train.log_every=5", "--config.train.checkpoint_every=20"]
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # one CPU device, as a user's machine
  out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
  assert out.returncode == 0, out.stderr[-3000:]

  for name in ("metrics.jsonl", "loss.png", "config.json"):
    assert (workdir / name).is_file(), name
    assert str(workdir / name) in out.stdout, f"{name} is not printed"
  assert any(p.name.startswith("events.out.tfevents") for p in (workdir / "tensorboard").iterdir())
  assert sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()) == [20, 40]

  rows = metrics_lib.read_metrics(str(workdir / "metrics.jsonl"))
  assert [r["step"] for r in rows] == list(range(5, steps + 1, 5))
  assert rows[-1]["loss"] < rows[0]["loss"] - 1.0, [r["loss"] for r in rows]
  assert {"loss/text", "loss/image", "grad_norm", "lr", "tokens_per_sec"} <= set().union(*rows)
