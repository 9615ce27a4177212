"""The training loop: validate config, build data/model/mesh/state, step, log, checkpoint, plot.

Reads top to bottom; every piece it calls lives in data/, model/, parallel/ or train/.
"""
import functools
import glob
import os
import time

import jax
import numpy as np

from unimodal_jax import config as config_lib
from unimodal_jax.data import embedded, pipeline
from unimodal_jax.data.vocab import MODALITIES, from_config
from unimodal_jax.model import experts, flops
from unimodal_jax.model.transformer import Transformer
from unimodal_jax.parallel import mesh as mesh_lib
from unimodal_jax.train import checkpoint, metrics as metrics_lib, state as state_lib, step as step_lib


def data_paths(config, workdir: str) -> list[str]:
  """Shards of `config.data.source`, prepared on first use."""
  if config.data.source == "embedded":
    return embedded.prepare(config, config.data.dir or os.path.join(workdir, "data"))
  paths = sorted(glob.glob(os.path.join(config.data.dir, "*.array_record*")))
  if not paths:
    raise FileNotFoundError(f"config.data.dir={config.data.dir!r} holds no *.array_record shards")
  return paths


def interval_metrics(step_metrics: list[dict]) -> dict:
  """Means over the steps of a logging interval, fetched in one transfer.

  Per-modality losses are token-weighted, lr is the last step's; a modality with no tokens in the interval is left out.
  """
  rows = jax.device_get(step_metrics)
  m = {k: float(np.mean([r[k] for r in rows])) for k in rows[0] if not k.startswith(("loss/", "num_tokens"))}
  for name in MODALITIES:
    counts = np.array([r[f"num_tokens/{name}"] for r in rows], np.float64)
    m[f"num_tokens/{name}"] = float(counts.sum())
    if counts.sum() > 0:
      m[f"loss/{name}"] = float(np.sum(counts * np.array([r[f"loss/{name}"] for r in rows])) / counts.sum())
  m["num_tokens"] = float(sum(r["num_tokens"] for r in rows))
  m["lr"] = float(rows[-1]["lr"])  # the rate the interval ended at, not a mean
  return m


def throughput(tokens_per_sec: float, config) -> dict:
  """tokens/s, model TFLOP/s per device (active FLOPs: a MoT token counts one expert) and, if the
  device's peak is configured, MFU."""
  tflops = tokens_per_sec * flops.train_flops_per_token(config.model, config.data.seq_len) / 1e12
  out = {"tokens_per_sec": tokens_per_sec, "model_tflops_per_device": tflops / jax.device_count()}
  if config.train.peak_tflops_per_device > 0:
    out["mfu"] = out["model_tflops_per_device"] / config.train.peak_tflops_per_device
  return out


def upcycled_params(config, model, mesh, rules, param_shardings):
  """The dense checkpoint `config.train.upcycle_from` copied into every expert of the MoT `model`."""
  dense_config = config.model.copy_and_resolve_references()
  dense_config.num_experts = 1
  dense, seq_len = Transformer(dense_config), config.data.seq_len
  dense_shardings = mesh_lib.logical_to_shardings(state_lib.param_logical_specs(dense, seq_len), mesh, rules)
  params = checkpoint.restore_params(config.train.upcycle_from,
                                     state_lib.abstract_params(dense, seq_len, dense_shardings))
  upcycle = functools.partial(experts.upcycle, mot_logical_specs=state_lib.param_logical_specs(model, seq_len),
                              num_experts=config.model.num_experts)
  with mesh_lib.mesh_context(mesh, rules):
    return jax.jit(upcycle, out_shardings=param_shardings)(params)


def train(config, workdir: str) -> dict:
  """Train `config` in `workdir`, resuming from its newest checkpoint; returns the last logged metrics."""
  config_lib.validate(config, jax.device_count(), jax.process_count())
  os.makedirs(workdir, exist_ok=True)
  if jax.process_index() == 0:
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(config.to_json_best_effort(indent=2))

  vocab = from_config(config)
  dataset = pipeline.make_dataset(config, data_paths(config, workdir), process_index=jax.process_index(),
                                  process_count=jax.process_count())
  data_iter = iter(dataset)

  mesh = mesh_lib.create_mesh(config.mesh)
  rules = mesh_lib.axis_rules(config)
  model = Transformer(config.model)
  schedule = state_lib.make_schedule(config.optim, config.train.num_steps)
  tx = state_lib.make_optimizer(config.optim, config.train.num_steps)
  state, shardings = state_lib.create_state(model, tx, mesh, rules, jax.random.key(config.seed), config.data.seq_len)
  manager = checkpoint.make_manager(workdir, config.train)
  if manager.latest_step() is None and config.train.init_from:
    state = state.replace(params=checkpoint.restore_params(
        config.train.init_from, state_lib.abstract_params(model, config.data.seq_len, shardings.params)))
  if manager.latest_step() is None and config.train.upcycle_from:
    state = state.replace(params=upcycled_params(config, model, mesh, rules, shardings.params))
  state = checkpoint.restore_latest(manager, state, data_iter)
  train_step = step_lib.compile_train_step(shardings, mesh, rules, model=model, tx=tx, vocab=vocab, config=config,
                                           schedule=schedule)

  writer = metrics_lib.MetricsWriter(workdir)
  last, pending, t0 = {}, [], time.perf_counter()
  with mesh_lib.mesh_context(mesh, rules):
    for step in range(int(jax.device_get(state.step)), config.train.num_steps):
      state, metrics = train_step(state, mesh_lib.global_batch(next(data_iter), mesh))
      pending.append(metrics)
      done = step + 1
      if done % config.train.log_every == 0 or done == config.train.num_steps:
        last = interval_metrics(pending)  # blocks until the interval's steps are done
        elapsed = time.perf_counter() - t0
        last.update(throughput(last["num_tokens"] / elapsed, config))
        last["step_time"] = elapsed / len(pending)
        writer.write(done, last)
        print(f"step {done}: loss {last['loss']:.4f} ({last['tokens_per_sec']:.0f} tokens/s)", flush=True)
        pending, t0 = [], time.perf_counter()
      checkpoint.save(manager, done, state, data_iter)
  if manager.latest_step() != config.train.num_steps:
    checkpoint.save(manager, config.train.num_steps, state, data_iter, force=True)
  manager.wait_until_finished()
  writer.close()
  if jax.process_index() == 0 and os.path.exists(writer.jsonl_path):
    metrics_lib.plot_losses(writer.jsonl_path, os.path.join(workdir, metrics_lib.LOSS_PLOT))
  return last


def describe_outputs(workdir: str) -> str:
  paths = {"checkpoints": "checkpoints", "metrics": metrics_lib.METRICS_FILE, "tensorboard": "tensorboard",
           "loss curve": metrics_lib.LOSS_PLOT, "config": "config.json"}
  return "\n".join(f"  {name:12s} {os.path.join(os.path.abspath(workdir), p)}" for name, p in paths.items())
