"""The training loop: validate config, build data/model/mesh/state, step, log, checkpoint, plot.

Reads top to bottom; every piece it calls lives in data/, model/, parallel/ or train/.
"""
import functools
import json
import time

import jax
import numpy as np
from absl import logging
from etils import epath
from jax.experimental import multihost_utils

from unimodal_jax import config as config_lib
from unimodal_jax.data import embedded, pipeline, sources
from unimodal_jax.data.batch import PackedBatch
from unimodal_jax.data.vocab import from_config
from unimodal_jax.model import experts
from unimodal_jax.model.transformer import Transformer
from unimodal_jax.parallel import mesh as mesh_lib
from unimodal_jax.train import checkpoint, evaluate, metrics as metrics_lib, preemption as preemption_lib
from unimodal_jax.train import prefetch, progress, state as state_lib, step as step_lib
from unimodal_jax.train import validate as validate_lib


def data_paths(config, workdir: str) -> tuple[list[str] | None, list[str]]:
  """(train, held-out) shards of `config.data.source`, prepared on first use; no held-out shards without eval.

  Train shards are None for data.source='mixture' (the pipeline reads data.sources). With the embedded source
  and no eval.dir, its last shard is held out of training.
  """
  if config.data.source == "embedded":
    train_paths = embedded.prepare(config, config.data.dir or str(epath.Path(workdir) / "data"))
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


def bad_records(count: int) -> float:
  """Records skipped up to the last batch trained on (data.on_bad_record='skip'), summed over processes."""
  counts = np.array(count, np.int64)
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
  """The newest readable checkpoint of this run; else train.branch_from / init_from / upcycle_from; else fresh.

  Checkpoints restore into the abstract state (shapes, dtypes and shardings by jax.eval_shape), so nothing is
  initialised only to be overwritten. Returns the state and that abstract state.
  """
  seq_len, t = config.data.seq_len, config.train
  shardings = state_lib.state_shardings(model, tx, mesh, rules, seq_len)
  abstract = state_lib.abstract_state(model, tx, seq_len, shardings)
  if manager.all_steps():
    return checkpoint.restore_latest(manager, abstract, data_iter), abstract
  if t.branch_from:
    return checkpoint.restore_step_dir(t.branch_from, abstract, data_iter), abstract
  if t.init_from:
    params = checkpoint.restore_params(t.init_from, abstract.params)
  elif t.upcycle_from:
    params = upcycled_params(config, model, mesh, rules, shardings.params)
  else:
    return state_lib.create_state(model, tx, mesh, rules, jax.random.key(config.seed), seq_len, shardings)[0], abstract
  return state_lib.state_from_params(params, tx, mesh, rules, shardings), abstract


def abstract_batch(config, mesh) -> PackedBatch:
  """ShapeDtypeStructs of the global batch on `mesh`: what the steps are compiled for."""
  sharding = mesh_lib.batch_sharding(mesh)
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
                      state_lib.dummy_batch(config.data.seq_len, config.train.batch_size))


def compile_steps(config, abstract, mesh, rules, *, with_eval: bool, model, tx, vocab, schedule):
  """The train step, and the eval step when `with_eval` (else None), compiled ahead of time for the abstract state
  and batch; and the seconds each took to lower and compile, reported on their own so that no rate includes them."""
  batch, shardings = abstract_batch(config, mesh), jax.tree.map(lambda x: x.sharding, abstract)
  seconds, eval_step = {}, None
  with mesh_lib.mesh_context(mesh, rules):
    t0 = time.perf_counter()
    train_step = step_lib.compile_train_step(shardings, mesh, rules, model=model, tx=tx, vocab=vocab, config=config,
                                             schedule=schedule).lower(abstract, batch).compile()
    seconds["train"] = time.perf_counter() - t0
    if with_eval:
      t0 = time.perf_counter()
      eval_step = step_lib.compile_eval_step(shardings.params, mesh, model=model, vocab=vocab,
                                             z_loss=config.model.z_loss).lower(abstract.params, batch).compile()
      seconds["eval"] = time.perf_counter() - t0
  return train_step, eval_step, seconds


def train(config, workdir: str, on_step=None) -> dict:
  """Train `config` in `workdir`, resuming from its newest readable checkpoint; returns the last logged metrics.

  `on_step(step, params)`, if given, runs after every step inside the mesh context (unimodal-train passes
  sample/periodic.py's hook, which samples every config.sample.every steps).

  On SIGTERM (any host) it saves at the next step boundary every process agrees on and returns early.
  """
  validate_lib.validate(config, jax.device_count(), jax.process_count())
  epath.Path(workdir).mkdir(parents=True, exist_ok=True)  # local or gs://...
  config_path, previous_config = epath.Path(workdir) / "config.json", None
  if jax.process_index() == 0:
    previous_config = json.loads(config_path.read_text()) if config_path.exists() else None
    config_path.write_text(config.to_json_best_effort(indent=2))

  vocab = from_config(config)
  train_paths, eval_paths = data_paths(config, workdir)
  shares = dict(process_index=jax.process_index(), process_count=jax.process_count())
  mesh = mesh_lib.create_mesh(config.mesh)
  rules = mesh_lib.axis_rules(config)
  t = config.train
  # (device batch, bad records so far), read and placed t.prefetch_batches steps ahead on a background thread.
  data_iter = prefetch.device_batches(pipeline.make_dataset(config, train_paths, **shares),
                                      functools.partial(mesh_lib.global_batch, mesh=mesh), t.prefetch_batches)

  model = Transformer(config.model)
  schedule = state_lib.make_schedule(config.optim, t.num_steps)
  tx = state_lib.make_optimizer(config.optim, t.num_steps)
  manager = checkpoint.make_manager(workdir, t)
  state, abstract = initial_state(config, manager, data_iter, model=model, tx=tx, mesh=mesh, rules=rules)
  data_iter.start_prefetch()  # the first batches are read and placed while the steps compile
  train_step, eval_step, compile_s = compile_steps(config, abstract, mesh, rules, with_eval=bool(eval_paths),
                                                   model=model, tx=tx, vocab=vocab, schedule=schedule)
  print(progress.compile_line(compile_s), flush=True)
  if eval_paths:
    eval_batches = [mesh_lib.global_batch(b, mesh) for b in evaluate.held_out_batches(config, eval_paths, **shares)]

  start = int(jax.device_get(state.step))
  if previous_config is not None and not state_lib.same_learning_rates(previous_config, config, start):
    logging.warning("resuming at step %d with a learning rate schedule (train.num_steps, optim.*) other than the one "
                    "steps 0-%d were taken with: the result will match neither config trained without interruption",
                    start, start - 1)
  writer = metrics_lib.MetricsWriter(workdir, resume_step=start)
  preemption = preemption_lib.PreemptionWatch()
  peak_tflops = progress.peak_tflops_per_device(config, jax.devices()[0].device_kind)
  profile_stop = t.profile_start_step + t.profile_num_steps if t.profile_start_step >= 0 else -1
  last, pending, previous, skipped = {}, [], None, 0
  extra = {f"compile_s/{name}": s for name, s in compile_s.items()}  # goes into the first logged row
  clock = progress.Stopwatch()
  try:
    with mesh_lib.mesh_context(mesh, rules):
      for step in range(start, t.num_steps):
        if step == t.profile_start_step:
          jax.profiler.start_trace(str(epath.Path(workdir) / "profile"))
        batch, skipped = next(data_iter)
        state, metrics = train_step(state, batch)
        if previous is not None:  # the step before this one has finished while this one was queued
          check_finite(int(jax.device_get(previous["nonfinite_streak"])), step, config)
        pending.append(metrics)
        previous, done = metrics, step + 1
        if done == profile_stop:
          jax.block_until_ready(state)
          jax.profiler.stop_trace()
        row = {}
        if done % t.log_every == 0 or done == t.num_steps:
          last = progress.interval_metrics(pending)  # blocks until the interval's steps are done
          seconds, slots = clock.lap(), len(pending) * t.batch_size * config.data.seq_len
          last.update(progress.throughput(last["num_tokens"], slots, seconds, config, num_devices=jax.device_count(),
                                          peak_tflops=peak_tflops), step_time=seconds / len(pending), **extra)
          last["data/bad_records"] = bad_records(skipped)
          eta = progress.eta_seconds(done, start, t.num_steps, clock.elapsed())
          print(progress.step_line(done, t.num_steps, last, eta), flush=True)
          row, pending, extra = dict(last), [], {}
        if eval_paths and (done % config.eval.every == 0 or done == t.num_steps):
          jax.block_until_ready(state)  # waiting for the steps before it is stepping time, not evaluation
          with clock.paused():
            evaluated = evaluate.evaluate(eval_step, state.params, eval_batches)
          print(progress.eval_line(done, t.num_steps, evaluated), flush=True)
          row.update(evaluated)
          last.update(evaluated)
        if row:
          writer.write(done, row)
        if on_step is not None:
          with clock.paused():
            on_step(done, state.params)
        if preemption.reached(done):
          checkpoint.save(manager, done, state, config, every=t.checkpoint_every, data_iterator=data_iter, force=True)
          print(f"Preempted: saved step {done}, exiting.", flush=True)
          break
        if done % t.checkpoint_every == 0:
          jax.block_until_ready(state)  # as for evaluation: the steps' time is not the save's
        with clock.paused():  # the first save also compiles orbax's slicing programs
          blocked = checkpoint.save(manager, done, state, config, every=t.checkpoint_every, data_iterator=data_iter)
        if blocked is not None:
          extra["checkpoint_save_blocking_s"] = blocked
      else:
        check_finite(int(jax.device_get(previous["nonfinite_streak"])) if previous else 0, t.num_steps, config)
        if int(jax.device_get(state.skipped_steps)) >= t.num_steps:
          raise NonFiniteError(f"all {t.num_steps} steps had NaN/Inf loss or gradients and were skipped: the params "
                               "are the initial ones. Check the model config (e.g. model.rope_theta, model.norm_eps) "
                               "and optim.learning_rate.")
        if manager.latest_step() != t.num_steps:
          checkpoint.save(manager, t.num_steps, state, config, every=t.checkpoint_every, data_iterator=data_iter,
                          force=True)
        checkpoint.verify(manager, t.num_steps, abstract)
  finally:  # a halt (NonFiniteError) or a failing step still lets the checkpoint being written finish
    data_iter.close()
    preemption.close()
    manager.wait_until_finished()
    writer.close()
  if jax.process_index() == 0 and writer.jsonl_path.exists():
    metrics_lib.plot_losses(writer.jsonl_path, epath.Path(workdir) / metrics_lib.LOSS_PLOT)
  return last


def describe_outputs(workdir: str) -> str:
  paths = {"checkpoints": "checkpoints", "metrics": metrics_lib.METRICS_FILE, "tensorboard": "tensorboard",
           "loss curve": metrics_lib.LOSS_PLOT, "config": "config.json"}
  return "\n".join(f"  {name:12s} {checkpoint.absolute(workdir) / p}" for name, p in paths.items())
