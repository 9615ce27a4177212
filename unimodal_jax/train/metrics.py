"""Run metrics: `metrics.jsonl` (one JSON object per logged step), TensorBoard events, loss-curve PNG.

Only process 0 writes; every writer call is a no-op elsewhere. The workdir may be local or gs://...: object stores
cannot append, so there the JSONL is rewritten and the TensorBoard events (written in a local staging folder) are
copied up at every write.
"""
import json
import os
import shutil
import tempfile

import jax
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (backend chosen first)
from etils import epath  # noqa: E402
from tensorboardX import SummaryWriter  # noqa: E402

METRICS_FILE = "metrics.jsonl"
LOSS_PLOT = "loss.png"


def truncate_jsonl(path, last_step: int) -> int:
  """Drop the rows of `path` past `last_step` (a run resumed there logs them again), by an atomic rewrite; unparseable
  lines (a row cut short by a kill) go too. Returns how many rows were dropped."""
  path = epath.Path(path)
  if not path.exists():
    return 0
  lines = [line for line in path.read_text().splitlines() if line.strip()]
  kept = []
  for line in lines:
    try:
      if json.loads(line)["step"] <= last_step:
        kept.append(line + "\n")
    except (json.JSONDecodeError, KeyError, TypeError):
      pass
  if len(kept) != len(lines):
    tmp = path.parent / (path.name + ".tmp")
    tmp.write_text("".join(kept))
    tmp.replace(path)  # rename() refuses an existing destination under etils.epath
  return len(lines) - len(kept)


class MetricsWriter:
  """Appends to a run's metrics; `resume_step` (the step a run restarts from) first drops what was logged past it,
  in metrics.jsonl and, through TensorBoard's purge_step, in the event files, so no step appears twice."""

  def __init__(self, workdir: str, resume_step: int = 0):
    self._enabled = jax.process_index() == 0
    self._local = "://" not in str(workdir)
    self.jsonl_path = epath.Path(workdir) / METRICS_FILE
    self.tensorboard_dir = epath.Path(workdir) / "tensorboard"
    if self._enabled:
      epath.Path(workdir).mkdir(parents=True, exist_ok=True)
      truncate_jsonl(self.jsonl_path, resume_step)
      purge_step = resume_step + 1 if resume_step else None
      if self._local:
        self._file = open(self.jsonl_path, "a")
        self._tb = SummaryWriter(str(self.tensorboard_dir), purge_step=purge_step)
      else:
        self._lines = self.jsonl_path.read_text().splitlines(keepends=True) if self.jsonl_path.exists() else []
        self._staging = tempfile.mkdtemp(prefix="tensorboard-")
        self._tb = SummaryWriter(self._staging, purge_step=purge_step)

  def write(self, step: int, metrics: dict):
    if not self._enabled:
      return
    scalars = {k: float(v) for k, v in metrics.items()}
    line = json.dumps({"step": step, **scalars}) + "\n"
    for k, v in scalars.items():
      self._tb.add_scalar(k, v, step)
    if self._local:
      self._file.write(line)
      self._file.flush()
    else:
      self._lines.append(line)
      self.jsonl_path.write_text("".join(self._lines))
      self._upload_events()

  def _upload_events(self):
    self._tb.flush()
    self.tensorboard_dir.mkdir(parents=True, exist_ok=True)
    for name in os.listdir(self._staging):
      with open(os.path.join(self._staging, name), "rb") as f:
        (self.tensorboard_dir / name).write_bytes(f.read())

  def close(self):
    if not self._enabled:
      return
    if self._local:
      self._file.close()
      self._tb.close()
    else:
      self._upload_events()
      self._tb.close()
      shutil.rmtree(self._staging, ignore_errors=True)


def read_metrics(path: str) -> list[dict]:
  return [json.loads(line) for line in epath.Path(path).read_text().splitlines() if line.strip()]


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
  with epath.Path(png_path).open("wb") as f:
    fig.savefig(f, format="png", dpi=100)
  plt.close(fig)
