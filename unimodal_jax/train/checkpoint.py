"""Orbax checkpoints of a train state (the language model's and the VQGAN's), with the Grain iterator state and the
run's config beside it (docs/design.md, "State and checkpoints").

Saves are asynchronous; restore resumes exactly (same params, same next batch), falls back past checkpoints that
cannot be read, and reshards onto whatever mesh the given state lives on.
"""
import json
import os
import time

import grain
import jax
import orbax.checkpoint as ocp
from absl import logging
from etils import epath


class NoValidCheckpointError(RuntimeError):
  """Every checkpoint in a run directory failed to restore."""


def make_manager(workdir: str, train_config) -> ocp.CheckpointManager:
  """`train_config` is config.train or config.vq_train: keep_checkpoints and (optionally) keep_period."""
  options = ocp.CheckpointManagerOptions(
      max_to_keep=train_config.keep_checkpoints,
      keep_period=train_config.get("keep_period", 0) or None, enable_async_checkpointing=True)
  return ocp.CheckpointManager(checkpoint_dir(workdir), options=options)


def absolute(path: str) -> epath.Path:
  """`path` as epath sees it: local paths made absolute (orbax needs that), gs://... left as it is."""
  return epath.Path(path if "://" in str(path) else os.path.abspath(path))


def checkpoint_dir(workdir: str) -> epath.Path:
  return absolute(workdir) / "checkpoints"


def save(manager: ocp.CheckpointManager, step: int, state, config, *, every: int, data_iterator=None,
         force: bool = False, host_copy: bool = False):
  """Start saving `state` (and the data iterator's position, and `config`) at `step` (given by the host so as not to
  wait on the device) if it is a multiple of `every`, or if forced. (Orbax alone would also save a run's first step.)

  `host_copy` saves from a host copy: for a replicated state, orbax's replica slicing of device arrays would compile
  one slice program per array shape. Returns the seconds the caller was blocked (the device-to-host copy; writing
  continues in the background), or None when no save was due.
  """
  if not force and step % every:
    return None
  t0 = time.perf_counter()
  items = {"state": ocp.args.StandardSave(jax.device_get(state) if host_copy else state),
           "config": ocp.args.JsonSave(json.loads(config.to_json_best_effort()))}
  if data_iterator is not None:
    items["data"] = grain.checkpoint.CheckpointSave(data_iterator)
  started = manager.save(step, args=ocp.args.Composite(**items), force=True)
  return time.perf_counter() - t0 if started else None


def _restore(manager: ocp.CheckpointManager, step: int, state, data_iterator):
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)
  items = {"state": ocp.args.StandardRestore(abstract)}
  if data_iterator is not None:
    items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
  return manager.restore(step, args=ocp.args.Composite(**items)).state


UNREADABLE_DIR = "unreadable_checkpoints"  # beside checkpoints/: steps that failed to restore (and a README.txt)


def move_aside(manager: ocp.CheckpointManager, step: int, reason: str) -> epath.Path:
  """Rename an unreadable step out of the manager's directory (never delete it), with the reason beside it, so the
  run can save that step again. Process 0 moves; every process then sees the manager without it."""
  directory = epath.Path(manager.directory)  # local or gs://...
  source = directory / str(step)
  target = directory.parent / UNREADABLE_DIR / f"{step}-{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}"
  if jax.process_index() == 0:
    target.parent.mkdir(parents=True, exist_ok=True)
    readme = target.parent / "README.txt"  # also makes the folder exist on an object store, as rename requires
    if not readme.exists():
      readme.write_text(f"Checkpoint steps of {directory} that failed to restore, moved here for inspection.\n")
    source.rename(target)  # on an object store: a copy of each object, then a delete
    (target / "REASON.txt").write_text(
        f"checkpoint step {step} could not be restored and was moved here from {source}:\n{reason}\n")
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(f"unreadable checkpoint {step} moved aside")
  manager.reload()
  return target


def restore_latest(manager: ocp.CheckpointManager, state, data_iterator=None):
  """Restore the newest readable checkpoint into the shapes/shardings of `state` and into `data_iterator`.

  A checkpoint that fails to restore (truncated, corrupted) is moved aside (`move_aside`) with a warning naming its
  step and where it went, and the next older one is tried. Returns `state` unchanged when there is no checkpoint;
  raises NoValidCheckpointError when there are checkpoints but none restores (training from scratch over them
  would lose the run; they are then left in place).
  """
  steps = sorted(manager.all_steps(), reverse=True)
  failures = []
  for step in steps:
    try:
      restored = _restore(manager, step, state, data_iterator)
    except Exception as e:  # orbax/tensorstore raise many types for unreadable data
      failures.append((step, f"{type(e).__name__}: {' '.join(str(e).split())[:2000]}"))  # one line
      logging.warning("checkpoint step %d in %s cannot be restored (%s); trying an older one", step,
                      manager.directory, failures[-1][1][:500])
      continue
    for bad_step, reason in failures:
      where = move_aside(manager, bad_step, reason)
      logging.warning("moved unreadable checkpoint step %d to %s; this run will save that step again", bad_step,
                      where)
    return restored
  if steps:
    raise NoValidCheckpointError(f"none of the checkpoints {steps} in {manager.directory} can be restored; they are "
                                 f"left in place. First error (step {failures[0][0]}): {failures[0][1][:500]}")
  return state


def verify(manager: ocp.CheckpointManager, step: int, abstract_state) -> None:
  """Raise unless checkpoint `step`, once written, restores (the last checkpoint of a finished run must)."""
  manager.wait_until_finished()
  try:
    _restore(manager, step, abstract_state, None)
  except Exception as e:
    raise RuntimeError(f"checkpoint step {step} in {manager.directory} was written but cannot be read back "
                       f"({type(e).__name__}: {str(e)[:500]})") from e


def restore_step_dir(step_dir: str, state, data_iterator):
  """The full state and data position saved in `<run>/checkpoints/<step>` (train.branch_from)."""
  step_dir = absolute(step_dir)
  parent, name = step_dir.parent, step_dir.name
  if not name.isdigit() or not (step_dir / "state").is_dir():
    raise FileNotFoundError(f"{step_dir} is not a checkpoint step directory (<run>/checkpoints/<step>)")
  with ocp.CheckpointManager(parent) as manager:
    return _restore(manager, int(name), state, data_iterator)


def restore_params(step_dir: str, abstract_params):
  """Only the params of a saved TrainState (`<workdir>/checkpoints/<step>`), in `abstract_params`' shardings.

  The optimizer state of that run is not read, so it may differ from this run's.
  """
  path = absolute(step_dir) / "state"
  if not path.is_dir():
    raise FileNotFoundError(f"{step_dir} is not a checkpoint step directory (no state/ inside)")
  item = {"params": abstract_params}
  restored = ocp.PyTreeCheckpointer().restore(path, args=ocp.args.PyTreeRestore(
      item=item, restore_args=ocp.checkpoint_utils.construct_restore_args(item), partial_restore=True))
  return restored["params"]
