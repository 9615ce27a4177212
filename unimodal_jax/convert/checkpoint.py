"""The orbax side of conversion: a run's checkpointed params read leaf by leaf, and imported params written as a
checkpoint step that `train.checkpoint.restore_params` reads. Optimizer state is never read or written.
"""
from collections.abc import Mapping

import jax
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import type_handlers

from unimodal_jax.train.checkpoint import absolute


def _nest(keys, value):
  for key in reversed(keys):
    value = {key: value}
  return value


class LazyLeaf:
  """One checkpointed param, read from disk by `np.asarray(leaf)`; its `shape` needs no read."""

  def __init__(self, state_dir: str, keys: tuple, shape: tuple):
    self._state_dir, self._keys, self.shape = state_dir, keys, shape

  def __array__(self, dtype=None, copy=None):
    restored = ocp.PyTreeCheckpointer().restore(self._state_dir, args=ocp.args.PyTreeRestore(
        item=_nest(("params", *self._keys), 0), partial_restore=True,
        restore_args=_nest(("params", *self._keys), ocp.RestoreArgs(restore_type=np.ndarray))))
    for key in ("params", *self._keys):
      restored = restored[key]
    return restored if dtype is None else restored.astype(dtype)


class CheckpointParams(Mapping):
  """The params of a checkpoint step as a read-only nested Mapping of LazyLeaf: a converter that reads each leaf
  with np.asarray when it needs it holds one leaf at a time."""

  def __init__(self, state_dir: str, metadata: Mapping, prefix: tuple = ()):
    self._state_dir, self._metadata, self._prefix = state_dir, metadata, prefix

  def __getitem__(self, key):
    value, keys = self._metadata[key], (*self._prefix, key)
    if isinstance(value, Mapping):
      return CheckpointParams(self._state_dir, value, keys)
    return LazyLeaf(self._state_dir, keys, tuple(value.shape))

  def __iter__(self):
    return iter(self._metadata)

  def __len__(self):
    return len(self._metadata)


def read_params(step_dir: str) -> CheckpointParams:
  """The params of the TrainState saved in `<workdir>/checkpoints/<step>` (its `state/` item), read lazily."""
  state_dir = absolute(step_dir) / "state"  # local or gs://...
  if not state_dir.is_dir():
    raise FileNotFoundError(f"{step_dir} is not a checkpoint step directory (no state/ inside)")
  tree = ocp.PyTreeCheckpointer().metadata(state_dir).item_metadata.tree
  if "params" not in tree:
    raise ValueError(f"{state_dir} holds no 'params' (it has {sorted(tree)})")
  return CheckpointParams(state_dir, tree["params"])


def load_all(params: Mapping) -> dict:
  """Every leaf of a (lazy) nested Mapping, in memory."""
  return {k: load_all(v) if isinstance(v, Mapping) else np.asarray(v) for k, v in params.items()}


def write_params(params, step_dir: str) -> str:
  """Save `params` as `<step_dir>/state` = {"params": params}, the layout of a run's checkpoint step without
  its step count, optimizer state or data iterator. Returns the state directory."""
  state_dir = absolute(step_dir) / "state"
  # One model copy in memory: no defensive copy of numpy leaves, and no compression, whose buffers orbax holds
  # until the whole tree is written (float weights compress by under 10% anyway).
  registry = type_handlers.create_type_handler_registry(
      (np.ndarray, type_handlers.NumpyHandler(deepcopy_host_arrays=False)), (jax.Array, type_handlers.ArrayHandler()))
  checkpointer = ocp.Checkpointer(ocp.PyTreeCheckpointHandler(type_handler_registry=registry, use_compression=False))
  checkpointer.save(state_dir, args=ocp.args.PyTreeSave({"params": params}))
  return str(state_dir)
