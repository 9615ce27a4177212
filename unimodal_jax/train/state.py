"""Train state, optimizer and sharded initialisation.

Parameters are created directly in their final sharding (jitted init with output shardings derived
from the model's logical axis names); optimizer state shards like the parameters it mirrors.
"""
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

from unimodal_jax.data.batch import PackedBatch
from unimodal_jax.parallel import mesh as mesh_lib

NO_DECAY_PARAMS = ("scale", "bias")  # norm scales and biases: no weight decay


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  opt_state: Any


def make_schedule(optim, num_steps: int):
  """Linear warmup from 0, then cosine decay to end_lr_ratio * learning_rate at num_steps."""
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=optim.learning_rate, warmup_steps=optim.warmup_steps,
      decay_steps=max(num_steps, optim.warmup_steps + 1), end_value=optim.learning_rate * optim.end_lr_ratio)


def decay_mask(params):
  """True where weight decay applies: every parameter but norm scales and biases."""
  return jax.tree_util.tree_map_with_path(lambda path, _: path[-1].key not in NO_DECAY_PARAMS, params)


def make_optimizer(optim, num_steps: int) -> optax.GradientTransformation:
  """AdamW (Chameleon recipe defaults) after global-norm clipping."""
  return optax.chain(
      optax.clip_by_global_norm(optim.clip_norm),
      optax.adamw(make_schedule(optim, num_steps), b1=optim.b1, b2=optim.b2, eps=optim.eps,
                  weight_decay=optim.weight_decay, mask=decay_mask))


def dummy_batch(seq_len: int, rows: int = 1) -> PackedBatch:
  zeros = np.zeros((rows, seq_len), np.int32)
  return PackedBatch(tokens=zeros, targets=zeros, segment_ids=zeros + 1, positions=zeros, modality=zeros,
                     loss_weights=zeros.astype(np.float32))


def param_logical_specs(model: nn.Module, seq_len: int):
  """Logical PartitionSpecs of the model's parameters (from their axis names, without allocating)."""
  boxed = jax.eval_shape(lambda: model.init(jax.random.key(0), dummy_batch(seq_len))["params"])
  return nn.get_partition_spec(boxed)


def abstract_params(model: nn.Module, seq_len: int, shardings):
  """ShapeDtypeStructs of the model's (unboxed) parameters, carrying `shardings`."""
  shapes = jax.eval_shape(lambda: nn.unbox(model.init(jax.random.key(0), dummy_batch(seq_len))["params"]))
  return jax.tree.map(lambda x, sh: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sh), shapes, shardings)


def abstract_state(model, tx, seq_len: int, shardings) -> TrainState:
  """ShapeDtypeStructs of the TrainState, carrying `shardings`: what ahead-of-time compilation needs."""
  shapes = jax.eval_shape(lambda: _init_state(model, tx, jax.random.key(0), seq_len))
  return jax.tree.map(lambda x, sh: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sh), shapes, shardings)


def state_shardings(model, tx, mesh, rules, seq_len: int):
  """NamedShardings for every leaf of TrainState; optimizer moments shard like their parameters."""
  param_sh = mesh_lib.logical_to_shardings(param_logical_specs(model, seq_len), mesh, rules)
  abstract = jax.eval_shape(lambda: _init_state(model, tx, jax.random.key(0), seq_len))
  replicated = NamedSharding(mesh, P())
  opt_sh = optax.tree_utils.tree_map_params(
      tx, lambda _, sh: sh, abstract.opt_state, param_sh, transform_non_params=lambda _: replicated,
      is_leaf=lambda x: isinstance(x, NamedSharding))
  return TrainState(step=replicated, params=param_sh, opt_state=opt_sh)


def _init_state(model, tx, rng, seq_len):
  params = nn.unbox(model.init(rng, dummy_batch(seq_len))["params"])
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))


def create_state(model, tx, mesh, rules, rng, seq_len: int):
  """A freshly initialised TrainState laid out on `mesh`, and its shardings."""
  shardings = state_shardings(model, tx, mesh, rules, seq_len)
  with mesh_lib.mesh_context(mesh, rules):
    state = jax.jit(lambda r: _init_state(model, tx, r, seq_len), out_shardings=shardings)(rng)
  return state, shardings
