"""What the train loop reports: interval means of the step metrics, throughput and MFU over loss tokens and over
row slots, and the console lines (step/total, per-modality loss, ETA; compile time and evaluation on lines of
their own). Wall time is the loop's to measure; compilation and evaluation stay out of every rate."""
import contextlib
import datetime
import time

import jax
import numpy as np

from unimodal_jax.data.vocab import MODALITIES
from unimodal_jax.model import flops
from unimodal_jax.parallel import chips


def interval_metrics(step_metrics: list[dict]) -> dict:
  """Means over the steps of a logging interval, fetched in one transfer.

  Per-modality losses are token-weighted; lr and the skipped-step counters are the last step's; a modality with
  no tokens in the interval is left out.
  """
  rows = jax.device_get(step_metrics)
  m = {k: float(np.mean([r[k] for r in rows])) for k in rows[0] if not k.startswith(("loss/", "num_tokens"))}
  for name in MODALITIES:
    counts = np.array([r[f"num_tokens/{name}"] for r in rows], np.float64)
    m[f"num_tokens/{name}"] = float(counts.sum())
    if counts.sum() > 0:
      m[f"loss/{name}"] = float(np.sum(counts * np.array([r[f"loss/{name}"] for r in rows])) / counts.sum())
  m["num_tokens"] = float(sum(r["num_tokens"] for r in rows))
  for key in ("lr", "skipped_steps", "nonfinite_streak"):  # where the interval ended, not means
    if key in rows[-1]:
      m[key] = float(rows[-1][key])
  return m


def peak_tflops_per_device(config, device_kind: str) -> float:
  """MFU's denominator: train.peak_tflops_per_device when set (> 0), else the chip table's dense bf16 peak for
  this `device_kind` (parallel/chips.py), else 0 (unknown: no MFU is logged)."""
  if config.train.peak_tflops_per_device > 0:
    return float(config.train.peak_tflops_per_device)
  chip = chips.chip_of_device_kind(device_kind)
  return chip.peak_bf16_flops / 1e12 if chip else 0.0


def throughput(loss_tokens: float, slots: float, seconds: float, config, *, num_devices: int,
               peak_tflops: float) -> dict:
  """Rates over `seconds` of stepping, counted two ways: over loss tokens (targets with weight > 0: tokens_per_sec,
  model_tflops_per_device, mfu) and over row slots (batch x seq positions, padding included, which the chips
  compute all the same: slot_tokens_per_sec, slot_model_tflops_per_device, slot_mfu). Model FLOPs are active
  FLOPs (a MoT token counts one expert); MFU only with a known peak."""
  per_token = flops.train_flops_per_token(config.model, config.data.seq_len)
  out = {}
  for prefix, count in (("", loss_tokens), ("slot_", slots)):
    out[f"{prefix}tokens_per_sec"] = count / seconds
    out[f"{prefix}model_tflops_per_device"] = count / seconds * per_token / 1e12 / num_devices
    if peak_tflops > 0:
      out[f"{prefix}mfu"] = out[f"{prefix}model_tflops_per_device"] / peak_tflops
  return out


class Stopwatch:
  """Wall time of each logging interval's steps (`lap`), less the time spent `paused` (evaluation, checkpoint
  saves); and the time since the loop began (`elapsed`, pauses included: what the ETA extrapolates)."""

  def __init__(self):
    self._start = self._lap_start = time.perf_counter()
    self._paused = 0.0

  @contextlib.contextmanager
  def paused(self):
    t0 = time.perf_counter()
    try:
      yield
    finally:
      self._paused += time.perf_counter() - t0

  def lap(self) -> float:
    now = time.perf_counter()
    seconds = now - self._lap_start - self._paused
    self._lap_start, self._paused = now, 0.0
    return seconds

  def elapsed(self) -> float:
    return time.perf_counter() - self._start


def eta_seconds(done: int, start: int, num_steps: int, elapsed: float) -> float:
  """Seconds left if the remaining steps go as fast as the `done - start` steps of this process did."""
  return (num_steps - done) * elapsed / max(done - start, 1)


def _losses(m: dict, prefix: str = "") -> str:
  per_modality = ", ".join(f"{name} {m[f'{prefix}loss/{name}']:.4f}" for name in MODALITIES
                           if f"{prefix}loss/{name}" in m)
  return f"loss {m[f'{prefix}loss']:.4f}" + (f" ({per_modality})" if per_modality else "")


def step_line(done: int, num_steps: int, m: dict, eta_s: float) -> str:
  """E.g. `step 10/300: loss 5.1234 (text 5.0123, image 5.3456) | 1,234 tokens/s | MFU 41.2% | 0.123 s/step |
  ETA 0:05:12` (on one line; MFU only with a known peak)."""
  parts = [f"step {done}/{num_steps}: {_losses(m)}", f"{m['tokens_per_sec']:,.0f} tokens/s"]
  if "mfu" in m:
    parts.append(f"MFU {100 * m['mfu']:.1f}%")
  parts += [f"{m['step_time']:.3f} s/step", f"ETA {datetime.timedelta(seconds=round(eta_s))}"]
  return " | ".join(parts)


def eval_line(done: int, num_steps: int, m: dict) -> str:
  """`eval at step 10/300: loss 5.2345 (text 5.1234, image 5.4567), perplexity 187.3`"""
  return f"eval at step {done}/{num_steps}: {_losses(m, 'eval/')}, perplexity {m['eval/perplexity']:.1f}"


def compile_line(seconds: dict) -> str:
  """`compiled the train step in 2.31 s, the eval step in 0.52 s`"""
  return "compiled " + ", ".join(f"the {name} step in {s:.2f} s" for name, s in seconds.items())
