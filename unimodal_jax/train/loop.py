"""The training loop: validate config, build data/model/mesh/state, step, log, checkpoint, plot.

Reads top to bottom; every piece it calls lives in data/, model/, parallel/ or train/.
"""
import functools
import os
import time

import jax
import numpy as np
from jax.experimental import multihost_utils

from unimodal_jax import config as config_lib
from unimodal_jax.data import embedded, pipeline, sources
from unimodal_jax.data.vocab import MODALITIES, from_config
from unimodal_jax.model import experts, flops
from unimodal_jax.model.transformer import Transformer
from unimodal_jax.parallel import mesh as mesh_lib
from unimodal_jax.train import checkpoint, evaluate, metrics as metrics_lib, preemption as preemption_lib
from unimodal_jax.train import state as state_lib, step as step_lib
from unimodal_jax.train import validate as validate_lib


def data_paths(config, workdir: str) -> tuple[list[str] | None, list[str]]:
  """(train, held-out) shards of `config.data.source`, prepared on first use; no held-out shards without eval.

  Train shards are None for data.source='mixture' (the pipeline reads data.sources). With the embedded source
  and no eval.dir, its last shard is held out of training.
  """
  if config.data.source == "embedded":
    train_paths = embedded.prepare(config, config.data.dir or os.path.join(workdir, "data"))
  elif config.data.source == "mixture":
    train_paths = None
  else:
    train_paths = sources.shard_paths(config.data.dir, "data.dir")
  if config.eval.every <= 0:
    return train_paths, []
  if config.eval.dir:
    return train_paths, sources.shard_paths(config.eval.dir, "eval.dir")
  if config.data.source != "embedded":
    raise config_lib.ConfigError("config.eval.dir: eval.every > 0 needs held-out shards for data.source="
                                 f"{config.data.source!r}")
  return train_paths[:-1], train_paths[-1:]


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


def bad_records(data_iter) -> float:
  """Records skipped so far (data.on_bad_record='skip'), summed over processes."""
  counts = np.array(data_iter.bad_records, np.int64)
  return float(multihost_utils.process_allgather(counts).sum() if jax.process_count() > 1 else counts)


class NonFiniteError(RuntimeError):
  """Too many consecutive steps with NaN/Inf loss or gradients."""


def check_finite(nonfinite_streak: int, step: int, config):
  """Halt when the last train.max_consecutive_nonfinite steps all had non-finite loss or gradients."""
  limit = config.train.max_consecutive_nonfinite
  if nonfinite_streak >= limit:
    raise NonFiniteError(
        f"step {step}: the last {nonfinite_streak} steps had NaN/Inf loss or gradients (config.train."
        f"max_consecutive_nonfinite={limit}); their updates were skipped, so the params are still those of step "
        f"{step - nonfinite_streak}. Lower optim.learning_rate, check the data, or resume from an earlier checkpoint.")


def initial_state(config, manager, data_iter, *, model, tx, mesh, rules):
  """The newest readable checkpoint of this run; else train.branch_from / init_from / upcycle_from; else fresh."""
  state, shardings = state_lib.create_state(model, tx, mesh, rules, jax.random.key(config.seed), config.data.seq_len)
  if manager.all_steps():
    return checkpoint.restore_latest(manager, state, data_iter), shardings
  t = config.train
  if t.branch_from:
    state = checkpoint.restore_step_dir(t.branch_from, state, data_iter)
  elif t.init_from:
    state = state.replace(params=checkpoint.restore_params(
        t.init_from, state_lib.abstract_params(model, config.data.seq_len, shardings.params)))
  elif t.upcycle_from:
    state = state.replace(params=upcycled_params(config, model, mesh, rules, shardings.params))
  return state, shardings


def train(config, workdir: str, on_step=None) -> dict:
  """Train `config` in `workdir`, resuming from its newest readable checkpoint; returns the last logged metrics.

  `on_step(step, params)`, if given, runs after every step inside the mesh context (unimodal-train passes
  sample/periodic.py's hook, which samples every config.sample.every steps).

  On SIGTERM (any host) it saves at the next step boundary every process agrees on and returns early.
  """
  validate_lib.validate(config, jax.device_count(), jax.process_count())
  os.makedirs(workdir, exist_ok=True)
  if jax.process_index() == 0:
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(config.to_json_best_effort(indent=2))

  vocab = from_config(config)
  train_paths, eval_paths = data_paths(config, workdir)
  shares = dict(process_index=jax.process_index(), process_count=jax.process_count())
  data_iter = iter(pipeline.make_dataset(config, train_paths, **shares))

  mesh = mesh_lib.create_mesh(config.mesh)
  rules = mesh_lib.axis_rules(config)
  model = Transformer(config.model)
  schedule = state_lib.make_schedule(config.optim, config.train.num_steps)
  tx = state_lib.make_optimizer(config.optim, config.train.num_steps)
  manager = checkpoint.make_manager(workdir, config.train)
  state, shardings = initial_state(config, manager, data_iter, model=model, tx=tx, mesh=mesh, rules=rules)
  train_step = step_lib.compile_train_step(shardings, mesh, rules, model=model, tx=tx, vocab=vocab, config=config,
                                           schedule=schedule)
  if eval_paths:
    eval_step = step_lib.compile_eval_step(shardings.params, mesh, model=model, vocab=vocab,
                                           z_loss=config.model.z_loss)
    eval_batches = evaluate.held_out_batches(config, eval_paths, **shares)

  writer = metrics_lib.MetricsWriter(workdir)
  preemption = preemption_lib.PreemptionWatch()
  t = config.train
  profile_stop = t.profile_start_step + t.profile_num_steps if t.profile_start_step >= 0 else -1
  last, pending, extra, previous, t0 = {}, [], {}, None, time.perf_counter()
  start = int(jax.device_get(state.step))
  try:
    with mesh_lib.mesh_context(mesh, rules):
      for step in range(start, t.num_steps):
        if step == t.profile_start_step:
          jax.profiler.start_trace(os.path.join(workdir, "profile"))
        state, metrics = train_step(state, mesh_lib.global_batch(next(data_iter), mesh))
        if previous is not None:  # the step before this one has finished while this one was queued
          check_finite(int(jax.device_get(previous["nonfinite_streak"])), step, config)
        pending.append(metrics)
        previous, done = metrics, step + 1
        if done == profile_stop:
          jax.block_until_ready(state)
          jax.profiler.stop_trace()
        if done % t.log_every == 0 or done == t.num_steps:
          last = interval_metrics(pending)  # blocks until the interval's steps are done
          elapsed = time.perf_counter() - t0
          last.update(throughput(last["num_tokens"] / elapsed, config), step_time=elapsed / len(pending), **extra)
          last["data/bad_records"] = bad_records(data_iter)
          if eval_paths and (done % config.eval.every == 0 or done == t.num_steps):
            last.update(evaluate.evaluate(eval_step, state.params, eval_batches, mesh))
          writer.write(done, last)
          print(f"step {done}: loss {last['loss']:.4f} ({last['tokens_per_sec']:.0f} tokens/s)", flush=True)
          pending, extra, t0 = [], {}, time.perf_counter()
        if on_step is not None:
          on_step(done, state.params)
        if preemption.reached(done):
          checkpoint.save(manager, done, state, config, every=t.checkpoint_every, data_iterator=data_iter, force=True)
          print(f"Preempted: saved step {done}, exiting.", flush=True)
          break
        blocked = checkpoint.save(manager, done, state, config, every=t.checkpoint_every, data_iterator=data_iter)
        if blocked is not None:
          extra["checkpoint_save_blocking_s"] = blocked
      else:
        check_finite(int(jax.device_get(previous["nonfinite_streak"])) if previous else 0, t.num_steps, config)
        if manager.latest_step() != t.num_steps:
          checkpoint.save(manager, t.num_steps, state, config, every=t.checkpoint_every, data_iterator=data_iter,
                          force=True)
  finally:  # a halt (NonFiniteError) or a failing step still lets the checkpoint being written finish
    preemption.close()
    manager.wait_until_finished()
    writer.close()
  if jax.process_index() == 0 and os.path.exists(writer.jsonl_path):
    metrics_lib.plot_losses(writer.jsonl_path, os.path.join(workdir, metrics_lib.LOSS_PLOT))
  return last


def describe_outputs(workdir: str) -> str:
  paths = {"checkpoints": "checkpoints", "metrics": metrics_lib.METRICS_FILE, "tensorboard": "tensorboard",
           "loss curve": metrics_lib.LOSS_PLOT, "config": "config.json"}
  return "\n".join(f"  {name:12s} {os.path.join(os.path.abspath(workdir), p)}" for name, p in paths.items())
