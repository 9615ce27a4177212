"""Ahead-of-time lowering of the real train step for any devices, e.g. TPU topologies on a CPU host.

Everything is abstract (ShapeDtypeStructs with the training shardings): nothing is allocated.
"""
import jax
import numpy as np

from unimodal_jax.data.batch import FIELDS, PackedBatch, dtypes
from unimodal_jax.data.vocab import from_config
from unimodal_jax.model.transformer import Transformer
from unimodal_jax.parallel import mesh as mesh_lib
from unimodal_jax.train import state as state_lib, step as step_lib


def abstract_batch(config, mesh) -> PackedBatch:
  sharding = mesh_lib.batch_sharding(mesh)
  shape = (config.train.batch_size, config.data.seq_len)
  types = dtypes()
  return PackedBatch(**{f: jax.ShapeDtypeStruct(shape, np.dtype(types[f]), sharding=sharding) for f in FIELDS})


def lower_train_step(config, devices):
  """The train step of `config` lowered for `devices` (the same mesh, shardings and code as training)."""
  vocab, model = from_config(config), Transformer(config.model)
  mesh, rules = mesh_lib.create_mesh(config.mesh, devices=devices), mesh_lib.axis_rules(config)
  tx = state_lib.make_optimizer(config.optim, config.train.num_steps)
  shardings = state_lib.state_shardings(model, tx, mesh, rules, config.data.seq_len)
  state = state_lib.abstract_state(model, tx, config.data.seq_len, shardings)
  step = step_lib.compile_train_step(shardings, mesh, rules, model=model, tx=tx, vocab=vocab, config=config,
                                     schedule=state_lib.make_schedule(config.optim, config.train.num_steps))
  with mesh_lib.mesh_context(mesh, rules):
    return step.lower(state, abstract_batch(config, mesh))
