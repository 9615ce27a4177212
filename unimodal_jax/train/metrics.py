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


class MetricsWriter:
  def __init__(self, workdir: str):
    self._enabled = jax.process_index() == 0
    self.jsonl_path = os.path.join(workdir, METRICS_FILE)
    self.tensorboard_dir = os.path.join(workdir, "tensorboard")
    if self._enabled:
      self._file = open(self.jsonl_path, "a")
      self._tb = SummaryWriter(self.tensorboard_dir)

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
