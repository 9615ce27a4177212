"""Run metrics: `metrics.jsonl` (one JSON object per logged step), TensorBoard events, loss-curve PNG.

Only process 0 writes; every writer call is a no-op elsewhere.
"""
import json
import os

import jax
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (backend chosen first)
from tensorboardX import SummaryWriter  # noqa: E402

METRICS_FILE = "metrics.jsonl"
LOSS_PLOT = "loss.png"


def truncate_jsonl(path: str, last_step: int) -> int:
  """Drop the rows of `path` past `last_step` (a run resumed there logs them again), atomically; unparseable lines
  (a row cut short by a kill) go too. Returns how many rows were dropped."""
  if not os.path.exists(path):
    return 0
  with open(path) as f:
    lines = [line for line in f if line.strip()]
  kept = []
  for line in lines:
    try:
      if json.loads(line)["step"] <= last_step:
        kept.append(line if line.endswith("\n") else line + "\n")
    except (json.JSONDecodeError, KeyError, TypeError):
      pass
  if len(kept) != len(lines):
    with open(path + ".tmp", "w") as f:
      f.writelines(kept)
    os.replace(path + ".tmp", path)
  return len(lines) - len(kept)


class MetricsWriter:
  """Appends to a run's metrics; `resume_step` (the step a run restarts from) first drops what was logged past it,
  in metrics.jsonl and, through TensorBoard's purge_step, in the event files, so no step appears twice."""

  def __init__(self, workdir: str, resume_step: int = 0):
    self._enabled = jax.process_index() == 0
    self.jsonl_path = os.path.join(workdir, METRICS_FILE)
    self.tensorboard_dir = os.path.join(workdir, "tensorboard")
    if self._enabled:
      truncate_jsonl(self.jsonl_path, resume_step)
      self._file = open(self.jsonl_path, "a")
      self._tb = SummaryWriter(self.tensorboard_dir, purge_step=resume_step + 1 if resume_step else None)

  def write(self, step: int, metrics: dict):
    if not self._enabled:
      return
    scalars = {k: float(v) for k, v in metrics.items()}
    self._file.write(json.dumps({"step": step, **scalars}) + "\n")
    self._file.flush()
    for k, v in scalars.items():
      self._tb.add_scalar(k, v, step)

  def close(self):
    if self._enabled:
      self._file.close()
      self._tb.close()


def read_metrics(path: str) -> list[dict]:
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def plot_losses(jsonl_path: str, png_path: str):
  """Loss and per-modality losses against step, from metrics.jsonl."""
  rows = read_metrics(jsonl_path)
  fig, ax = plt.subplots(figsize=(7, 4))
  for key in ("loss", "loss/text", "loss/image"):
    points = [(r["step"], r[key]) for r in rows if key in r]
    if points:
      ax.plot(*zip(*points), label=key)
  ax.set_xlabel("step")
  ax.set_ylabel("cross-entropy (nats)")
  ax.legend()
  ax.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(png_path, dpi=100)
  plt.close(fig)
