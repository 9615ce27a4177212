"""The jitted, sharded train step: forward, loss, gradients, optax update, metrics.

Compiled once per run with donated state; the data it sees is a global PackedBatch on the mesh.
"""
import functools

import jax
import jax.numpy as jnp
import optax

from unimodal_jax.data.batch import PackedBatch
from unimodal_jax.data.vocab import MODALITIES
from unimodal_jax.model.loss import loss_and_metrics
from unimodal_jax.parallel import mesh as mesh_lib
from unimodal_jax.train.state import TrainState


def loss_fn(params, batch: PackedBatch, *, model, vocab, z_loss, dropout_rng=None):
  """Objective and metrics of `params` on `batch`; dropout is active iff a dropout_rng is given."""
  rngs = None if dropout_rng is None else {"dropout": dropout_rng}
  logits = model.apply({"params": params}, batch, deterministic=dropout_rng is None, rngs=rngs)
  return loss_and_metrics(logits, batch, vocab, z_loss)


def train_step(state: TrainState, batch: PackedBatch, *, model, tx, vocab, config, schedule):
  dropout_rng = None
  if config.model.dropout_rate > 0:
    dropout_rng = jax.random.fold_in(jax.random.key(config.seed + 1), state.step)
  grad_fn = jax.value_and_grad(
      functools.partial(loss_fn, model=model, vocab=vocab, z_loss=config.model.z_loss, dropout_rng=dropout_rng),
      has_aux=True)
  (_, metrics), grads = grad_fn(state.params, batch)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  metrics["grad_norm"] = optax.tree.norm(grads)
  if config.model.num_experts > 1:  # tokens each expert processed (inputs, padding excluded)
    for i, name in enumerate(MODALITIES):
      metrics[f"expert_tokens/{name}"] = jnp.sum((batch.modality == i) & (batch.segment_ids > 0))
  metrics["lr"] = schedule(state.step)
  return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics


def compile_train_step(state_shardings, mesh, rules, **kwargs):
  """jit(train_step) with state shardings in and out, the state donated, the batch over ('data','fsdp').

  Call the result inside `mesh_lib.mesh_context(mesh, rules)`.
  """
  batch_sh = mesh_lib.batch_sharding(mesh)
  return jax.jit(functools.partial(train_step, **kwargs), in_shardings=(state_shardings, batch_sh),
                 out_shardings=(state_shardings, None), donate_argnums=(0,))
