"""The jitted, sharded train and eval steps: forward, loss, gradients (accumulated over microbatches), a guarded
optax update, metrics.

Compiled once per run with donated state; the data they see is a global PackedBatch on the mesh.
"""
import functools

import jax
import jax.numpy as jnp
import optax
from jax.sharding import PartitionSpec as P

from unimodal_jax.data.batch import PackedBatch
from unimodal_jax.data.vocab import MODALITIES
from unimodal_jax.model.loss import chunked_loss_sums, loss_sums, metrics_from_sums
from unimodal_jax.model.transformer import batch_inputs
from unimodal_jax.parallel import mesh as mesh_lib
from unimodal_jax.train.state import TrainState


def batch_loss_sums(params, batch: PackedBatch, *, model, vocab, z_loss, dropout_rng=None) -> dict:
  """Loss sums (model/loss.py) of `params` on `batch`; dropout is active iff a dropout_rng is given. With
  model.loss_chunk_size > 0 the output head and loss run that many positions at a time."""
  rngs = None if dropout_rng is None else {"dropout": dropout_rng}
  chunk_size = model.config.loss_chunk_size
  out = model.apply({"params": params}, **batch_inputs(batch), deterministic=dropout_rng is None, rngs=rngs,
                    return_hidden=chunk_size > 0)
  if chunk_size > 0:
    return chunked_loss_sums(*out, batch, vocab, z_loss, chunk_size)
  return loss_sums(out, batch, vocab, z_loss)


def loss_fn(params, batch: PackedBatch, *, model, vocab, z_loss, dropout_rng=None):
  """The objective (weighted mean of ce + z over the batch) and its metrics."""
  metrics = metrics_from_sums(batch_loss_sums(params, batch, model=model, vocab=vocab, z_loss=z_loss,
                                              dropout_rng=dropout_rng))
  return metrics["loss"], metrics


def _objective(params, batch: PackedBatch, total_weight, *, dropout_rng, **kwargs):
  """This batch's share of the whole step's objective, (ce + z) / total_weight, and its loss sums."""
  sums = batch_loss_sums(params, batch, dropout_rng=dropout_rng, **kwargs)
  return (sums["ce"] + sums["z"]) / total_weight, sums


def microbatches(batch: PackedBatch, num: int) -> PackedBatch:
  """[rows, ...] -> [num, rows / num, ...]; microbatch i holds rows i, i + num, ... so that every device keeps
  an equal share of every microbatch (rows are laid out over devices in contiguous blocks)."""
  def split(x):
    x = x.reshape(x.shape[0] // num, num, *x.shape[1:])
    return jax.lax.with_sharding_constraint(jnp.swapaxes(x, 0, 1), P(None, mesh_lib.BATCH_AXES))
  return jax.tree.map(split, batch)


def loss_and_grads(params, batch: PackedBatch, *, model, vocab, z_loss: float, grad_accum_steps: int = 1,
                   dropout_rng=None):
  """Gradients of the batch's weighted-mean loss and its metrics, summed over `grad_accum_steps` microbatches.

  Each microbatch's loss is divided by the whole batch's token weight, so the sum equals one big batch's
  gradient up to float rounding; dropout draws a fresh key per microbatch.
  """
  total_weight = jnp.maximum(jnp.sum(batch.loss_weights.astype(jnp.float32)), 1e-9)
  grad_fn = jax.grad(functools.partial(_objective, model=model, vocab=vocab, z_loss=z_loss), has_aux=True)
  if grad_accum_steps == 1:
    grads, sums = grad_fn(params, batch, total_weight, dropout_rng=dropout_rng)
    return grads, metrics_from_sums(sums)

  def micro_grads(i, micro):
    rng = None if dropout_rng is None else jax.random.fold_in(dropout_rng, i)
    return grad_fn(params, micro, total_weight, dropout_rng=rng)

  def accumulate(carry, inputs):
    return jax.tree.map(jnp.add, carry, micro_grads(*inputs)), None

  micro = microbatches(batch, grad_accum_steps)
  shapes = jax.eval_shape(micro_grads, 0, jax.tree.map(lambda x: x[0], micro))
  zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
  (grads, sums), _ = jax.lax.scan(accumulate, zeros, (jnp.arange(grad_accum_steps), micro))
  return grads, metrics_from_sums(sums)


def train_step(state: TrainState, batch: PackedBatch, *, model, tx, vocab, config, schedule):
  """One optimizer step. A step whose loss or gradients are not finite leaves params and optimizer state as they
  were and counts itself in skipped_steps / nonfinite_streak (the loop halts on a long streak)."""
  dropout_rng = None
  if config.model.dropout_rate > 0:
    dropout_rng = jax.random.fold_in(jax.random.key(config.seed + 1), state.step)
  grads, metrics = loss_and_grads(state.params, batch, model=model, vocab=vocab, z_loss=config.model.z_loss,
                                  grad_accum_steps=config.train.grad_accum_steps, dropout_rng=dropout_rng)
  metrics["grad_norm"] = optax.tree.norm(grads)
  finite = jnp.isfinite(metrics["loss"]) & jnp.isfinite(metrics["grad_norm"])
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  keep = functools.partial(jax.tree.map, lambda new, old: jnp.where(finite, new, old))
  skipped = (~finite).astype(jnp.int32)
  new_state = TrainState(step=state.step + 1, params=keep(params, state.params),
                         opt_state=keep(opt_state, state.opt_state), skipped_steps=state.skipped_steps + skipped,
                         nonfinite_streak=(state.nonfinite_streak + 1) * skipped)
  if config.model.num_experts > 1:  # tokens each expert processed (inputs, padding excluded)
    for i, name in enumerate(MODALITIES):
      metrics[f"expert_tokens/{name}"] = jnp.sum((batch.modality == i) & (batch.segment_ids > 0))
  metrics["data/padding"] = jnp.mean((batch.segment_ids == 0).astype(jnp.float32))  # positions holding no token
  metrics["lr"] = schedule(state.step)
  metrics["skipped_steps"] = new_state.skipped_steps
  metrics["nonfinite_streak"] = new_state.nonfinite_streak
  return new_state, metrics


def compile_train_step(state_shardings, mesh, rules, **kwargs):
  """jit(train_step) with state shardings in and out, the state donated, the batch over ('data','fsdp').

  Call the result inside `mesh_lib.mesh_context(mesh, rules)`.
  """
  batch_sh = mesh_lib.batch_sharding(mesh)
  return jax.jit(functools.partial(train_step, **kwargs), in_shardings=(state_shardings, batch_sh),
                 out_shardings=(state_shardings, None), donate_argnums=(0,))


def compile_eval_step(param_shardings, mesh, **kwargs):
  """jit(batch_loss_sums) without dropout, params in their training shardings, the batch over ('data','fsdp').

  Add its results over batches, then `metrics_from_sums`.
  """
  return jax.jit(functools.partial(batch_loss_sums, **kwargs), in_shardings=(param_shardings, mesh_lib.batch_sharding(mesh)))
