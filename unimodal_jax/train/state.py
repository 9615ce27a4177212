"""Train state, optimizer and sharded initialisation.

Parameters are created directly in their final sharding (jitted init with output shardings derived
from the model's logical axis names); optimizer state shards like the parameters it mirrors.
"""
import functools
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

from unimodal_jax.data.batch import PackedBatch
from unimodal_jax.parallel import mesh as mesh_lib

SCHEDULES = ("cosine", "wsd")
WSD_DECAYS = ("linear", "sqrt")  # sqrt: lr * (1 - sqrt(t)), the "1-sqrt" cooldown (Hägele et al. 2024)
DECAY_EXCLUDABLE = ("norms", "biases", "embeddings")  # parameter classes optim.weight_decay_exclude may name


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  opt_state: Any
  skipped_steps: jax.Array  # updates skipped because loss or gradients were not finite, in total
  nonfinite_streak: jax.Array  # ... consecutively, up to this step


def make_schedule(optim, num_steps: int):
  """Learning rate by step. Both start with a linear warmup from 0 over optim.warmup_steps.

  cosine: cosine decay to end_lr_ratio * learning_rate at num_steps.
  wsd (warmup-stable-decay): constant until num_steps - optim.decay_steps, then linear or 1-sqrt decay to
  end_lr_ratio * learning_rate at num_steps. The stable phase does not depend on num_steps, so a shorter run
  can branch off a longer run's stable-phase checkpoint (train.branch_from) and decay from there.
  """
  peak, end = optim.learning_rate, optim.learning_rate * optim.end_lr_ratio
  if optim.schedule == "cosine":
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=peak, warmup_steps=optim.warmup_steps,
        decay_steps=max(num_steps, optim.warmup_steps + 1), end_value=end)
  warmup = optax.linear_schedule(0.0, peak, max(optim.warmup_steps, 1))
  decay_start = num_steps - optim.decay_steps

  def wsd(step):
    t = jnp.clip((step - decay_start) / max(optim.decay_steps, 1), 0.0, 1.0)
    fraction = t if optim.wsd_decay == "linear" else jnp.sqrt(t)
    after_warmup = peak + (end - peak) * fraction
    return jnp.where(step < optim.warmup_steps, warmup(step), after_warmup)
  return wsd


def same_learning_rates(previous: dict, config, steps: int) -> bool:
  """Whether the run whose config was `previous` (its config.json) took its first `steps` steps at the learning rates
  `config` gives them. Only then does resuming it with `config` continue an uninterrupted run of `config` exactly: a
  larger train.num_steps stretches the cosine schedule under steps already taken (a WSD stable phase does not move)."""
  # A key the previous config lacks (written by an older version) counts as unchanged.
  old_optim = ml_collections.ConfigDict({**config.optim.to_dict(), **previous.get("optim", {})})
  old_num_steps = previous.get("train", {}).get("num_steps", config.train.num_steps)
  steps_taken = np.arange(steps)
  return np.array_equal(np.asarray(make_schedule(old_optim, old_num_steps)(steps_taken)),
                        np.asarray(make_schedule(config.optim, config.train.num_steps)(steps_taken)))


def parameter_class(path) -> str:
  """'norms', 'biases', 'embeddings' or 'weights', from a parameter's path in the tree."""
  names = [getattr(k, "key", str(k)) for k in path]
  if any("norm" in n for n in names[:-1]):
    return "norms"
  if names[-1].endswith("bias"):
    return "biases"
  if names[-1] == "embedding":
    return "embeddings"
  return "weights"


def decay_mask(params, exclude=("norms", "biases")):
  """True where weight decay applies: every parameter whose class is not in `exclude`."""
  return jax.tree_util.tree_map_with_path(lambda path, _: parameter_class(path) not in exclude, params)


def make_optimizer(optim, num_steps: int) -> optax.GradientTransformation:
  """AdamW (Chameleon recipe defaults) after global-norm clipping."""
  mask = functools.partial(decay_mask, exclude=tuple(optim.weight_decay_exclude))
  return optax.chain(
      optax.clip_by_global_norm(optim.clip_norm),
      optax.adamw(make_schedule(optim, num_steps), b1=optim.b1, b2=optim.b2, eps=optim.eps,
                  weight_decay=optim.weight_decay, mask=mask))


def dummy_batch(seq_len: int, rows: int = 1) -> PackedBatch:
  """A batch of zeros (one segment per row): what the train and eval steps are compiled for."""
  zeros = np.zeros((rows, seq_len), np.int32)
  return PackedBatch(tokens=zeros, targets=zeros, segment_ids=zeros + 1, positions=zeros, modality=zeros,
                     loss_weights=zeros.astype(np.float32))


def dummy_inputs(seq_len: int, rows: int = 1) -> dict:
  """Transformer inputs to initialise or trace the model with: rows of one all-zero document."""
  zeros = np.zeros((rows, seq_len), np.int32)
  return {"tokens": zeros, "positions": zeros, "segment_ids": zeros + 1, "modality": zeros}


def init_params(model: nn.Module, rng, seq_len: int = 8):
  """Freshly initialised float32 params (plain arrays; the logical axis names are dropped)."""
  return nn.unbox(model.init(rng, **dummy_inputs(seq_len))["params"])


def param_logical_specs(model: nn.Module, seq_len: int):
  """Logical PartitionSpecs of the model's parameters (from their axis names, without allocating)."""
  boxed = jax.eval_shape(lambda: model.init(jax.random.key(0), **dummy_inputs(seq_len))["params"])
  return nn.get_partition_spec(boxed)


def abstract_params(model: nn.Module, seq_len: int, shardings):
  """ShapeDtypeStructs of the model's (unboxed) parameters, carrying `shardings`."""
  shapes = jax.eval_shape(lambda: init_params(model, jax.random.key(0), seq_len))
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
  return TrainState(step=replicated, params=param_sh, opt_state=opt_sh, skipped_steps=replicated,
                    nonfinite_streak=replicated)


def _state_at_step_0(params, tx) -> TrainState:
  zero = jnp.zeros((), jnp.int32)
  return TrainState(step=zero, params=params, opt_state=tx.init(params), skipped_steps=zero, nonfinite_streak=zero)


def _init_state(model, tx, rng, seq_len):
  return _state_at_step_0(init_params(model, rng, seq_len), tx)


def create_state(model, tx, mesh, rules, rng, seq_len: int, shardings=None):
  """A freshly initialised TrainState laid out on `mesh` (in `shardings`, derived when not given), and its
  shardings."""
  if shardings is None:
    shardings = state_shardings(model, tx, mesh, rules, seq_len)
  with mesh_lib.mesh_context(mesh, rules):
    state = jax.jit(lambda r: _init_state(model, tx, r, seq_len), out_shardings=shardings)(rng)
  return state, shardings


def state_from_params(params, tx, mesh, rules, shardings) -> TrainState:
  """A TrainState at step 0 around given `params` (a converted or upcycled checkpoint): fresh optimizer state,
  laid out in `shardings`, without initialising parameters only to replace them."""
  with mesh_lib.mesh_context(mesh, rules):
    return jax.jit(lambda p: _state_at_step_0(p, tx), out_shardings=shardings)(params)
