"""Orbax checkpoints of the train state with the Grain iterator state beside it (DESIGN section 7).

Saves are asynchronous; restore resumes exactly: same params, same next batch.
"""
import os

import grain
import jax
import orbax.checkpoint as ocp


def make_manager(workdir: str, train_config) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(
      save_interval_steps=train_config.checkpoint_every, max_to_keep=train_config.keep_checkpoints,
      enable_async_checkpointing=True)
  return ocp.CheckpointManager(os.path.join(os.path.abspath(workdir), "checkpoints"), options=options)


def save(manager: ocp.CheckpointManager, step: int, state, data_iterator, *, force: bool = False) -> bool:
  """Save `state` (at `step`, given by the host so as not to wait on the device) if due or forced.

  Returns whether a save started.
  """
  return manager.save(step, args=ocp.args.Composite(
      state=ocp.args.StandardSave(state), data=grain.checkpoint.CheckpointSave(data_iterator)), force=force)


def restore_latest(manager: ocp.CheckpointManager, state, data_iterator):
  """Restore the newest checkpoint into the shapes/shardings of `state` and into `data_iterator`.

  Returns the restored state, or `state` unchanged when there is no checkpoint.
  """
  step = manager.latest_step()
  if step is None:
    return state
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)
  restored = manager.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(abstract), data=grain.checkpoint.CheckpointRestore(data_iterator)))
  return restored.state


def restore_params(step_dir: str, abstract_params):
  """Only the params of a saved TrainState (`<workdir>/checkpoints/<step>`), in `abstract_params`' shardings.

  The optimizer state of that run is not read, so it may differ from this run's.
  """
  path = os.path.join(os.path.abspath(step_dir), "state")
  if not os.path.isdir(path):
    raise FileNotFoundError(f"{step_dir} is not a checkpoint step directory (no state/ inside)")
  item = {"params": abstract_params}
  restored = ocp.PyTreeCheckpointer().restore(path, args=ocp.args.PyTreeRestore(
      item=item, restore_args=ocp.checkpoint_utils.construct_restore_args(item), partial_restore=True))
  return restored["params"]
