"""The training loop: validate config, build data/model/mesh/state, step, log, checkpoint, plot.

Reads top to bottom; every piece it calls lives in data/, model/, parallel/ or train/.
"""
import glob
import os
import time

import jax
import numpy as np

from unimodal_jax import config as config_lib
from unimodal_jax.data import embedded, pipeline
from unimodal_jax.data.vocab import MODALITIES, from_config
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


def host_metrics(metrics: dict) -> dict:
  """Device metrics -> floats; a modality's loss is dropped when the batch had none of its tokens."""
  m = {k: float(v) for k, v in jax.device_get(metrics).items()}
  for name in MODALITIES:
    if m[f"num_tokens/{name}"] == 0:
      del m[f"loss/{name}"]
  return m


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
  state = checkpoint.restore_latest(manager, state, data_iter)
  train_step = step_lib.compile_train_step(shardings, mesh, rules, model=model, tx=tx, vocab=vocab, config=config,
                                           schedule=schedule)

  writer = metrics_lib.MetricsWriter(workdir)
  start = int(jax.device_get(state.step))
  last, tokens, t0 = {}, 0, time.perf_counter()
  with mesh_lib.mesh_context(mesh, rules):
    for step in range(start, config.train.num_steps):
      local = next(data_iter)
      tokens += local.num_tokens() * jax.process_count()
      state, metrics = train_step(state, mesh_lib.global_batch(local, mesh))
      done = step + 1
      if done % config.train.log_every == 0 or done == config.train.num_steps:
        last = host_metrics(metrics)  # blocks until the step is done
        elapsed = time.perf_counter() - t0
        last.update(step_time=elapsed / (done - start), tokens_per_sec=tokens / elapsed)
        writer.write(done, last)
        print(f"step {done}: loss {last['loss']:.4f} ({last['tokens_per_sec']:.0f} tokens/s)", flush=True)
        start, tokens, t0 = done, 0, time.perf_counter()
      checkpoint.save(manager, state, data_iter)
  checkpoint.save(manager, state, data_iter, force=manager.latest_step() != config.train.num_steps)
  manager.wait_until_finished()
  writer.close()
  if jax.process_index() == 0 and os.path.exists(writer.jsonl_path):
    metrics_lib.plot_losses(writer.jsonl_path, os.path.join(workdir, metrics_lib.LOSS_PLOT))
  return last


def describe_outputs(workdir: str) -> str:
  paths = {"checkpoints": "checkpoints", "metrics": metrics_lib.METRICS_FILE, "tensorboard": "tensorboard",
           "loss curve": metrics_lib.LOSS_PLOT, "config": "config.json"}
  return "\n".join(f"  {name:12s} {os.path.join(os.path.abspath(workdir), p)}" for name, p in paths.items())
