"""Kill-and-resume guarantees (docs/design.md, "State and checkpoints"): a run killed at any step (SIGKILL) or
preempted (SIGTERM) and restarted ends with the same params bit for bit as an uninterrupted run (with input prefetch
on: a checkpoint records the data position of the batch trained on); unreadable checkpoints are skipped; checkpoints
restore onto another mesh, into an abstract state; a WSD decay branched off a stable-phase checkpoint equals the full
run."""
import glob
import json
import logging
import os
import random
import shutil
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest

import batches
from test_model import load_config
from unimodal_jax.convert.checkpoint import load_all, read_params
from unimodal_jax.data import pipeline
from unimodal_jax.data.vocab import from_config
from unimodal_jax.model.transformer import Transformer
from unimodal_jax.parallel import mesh as mesh_lib
from unimodal_jax.train.metrics import read_metrics
from unimodal_jax.train import checkpoint, loop, state as state_lib, step as step_lib
from unimodal_jax.data import vocab as vocab_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS, EVERY = 24, 8
OVERRIDES = {"train.num_steps": STEPS, "train.checkpoint_every": EVERY, "train.log_every": 1,
             "train.keep_checkpoints": 2, "optim.warmup_steps": 4}


def run_config(data_dir, **extra):
  c = load_config("tiny")
  for key, value in {**OVERRIDES, "data.dir": data_dir, **extra}.items():
    section, name = key.split(".")
    c[section][name] = value
  return c


def flat(params) -> dict:
  return {jax.tree_util.keystr(k): np.asarray(v) for k, v in jax.tree_util.tree_flatten_with_path(params)[0]}


def final_params(workdir, step=STEPS) -> dict:
  return flat(load_all(read_params(os.path.join(workdir, "checkpoints", str(step)))))


def assert_bitwise_equal(a, b):
  assert a.keys() == b.keys() and len(a) > 5, (a.keys(), b.keys())
  different = [k for k in a if not np.array_equal(a[k], b[k])]
  assert not different, f"params differ bitwise: {different}"


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  """An uninterrupted run: (its workdir, the shared data dir)."""
  root = tmp_path_factory.mktemp("reference")
  workdir, data_dir = str(root / "run"), str(root / "data")
  loop.train(run_config(data_dir), workdir)
  return workdir, data_dir


def start_training(workdir, data_dir):
  cmd = [sys.executable, "-m", "unimodal_jax.cli.train", "--config", os.path.join(REPO, "configs", "tiny.py"),
         "--workdir", workdir, *[f"--config.{k}={v}" for k, v in {**OVERRIDES, "data.dir": data_dir}.items()]]
  return subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def committed_steps(workdir) -> list[int]:
  """Finished checkpoints (orbax writes into `<step>.orbax-checkpoint-tmp` and renames when done)."""
  paths = glob.glob(os.path.join(workdir, "checkpoints", "*", "commit_success.txt"))
  return [int(name) for name in (os.path.basename(os.path.dirname(p)) for p in paths) if name.isdigit()]


def logged_step(line: str) -> int | None:
  """N of the console line `step N/total: ...`, else None."""
  return int(line.split()[1].split("/")[0]) if line.startswith("step ") else None


def run_until(proc, step: int, workdir):
  """Read the run's output until it has logged `step` or later with a committed checkpoint on disk."""
  lines = []
  for line in proc.stdout:
    lines.append(line)
    if (logged_step(line) or 0) >= step and committed_steps(workdir):
      return
  raise AssertionError(f"the run ended before step {step}:\n" + "".join(lines[-30:]))


def resume_to_the_end(workdir, data_dir) -> str:
  proc = start_training(workdir, data_dir)
  out, _ = proc.communicate(timeout=600)
  assert proc.returncode == 0, out[-3000:]
  return out


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_killed_run_resumes_to_bitwise_identical_params(reference, tmp_path, sig):
  ref_dir, data_dir = reference
  workdir = str(tmp_path / "run")
  kill_at = random.Random(f"{sig}").randint(EVERY + 1, STEPS - 2)
  proc = start_training(workdir, data_dir)
  run_until(proc, kill_at, workdir)
  proc.send_signal(sig)
  rest, _ = proc.communicate(timeout=300)
  if sig == signal.SIGTERM:  # graceful: saves at the next step boundary and exits 0
    assert proc.returncode == 0, rest[-3000:]
    saved = int(rest.split("Preempted: saved step ")[1].split(",")[0])
    assert kill_at <= saved < STEPS
    assert os.path.exists(os.path.join(workdir, "checkpoints", str(saved), "commit_success.txt"))
  else:
    assert proc.returncode == -signal.SIGKILL
  out = resume_to_the_end(workdir, data_dir)
  logged = [n for n in map(logged_step, out.splitlines()) if n is not None]
  assert logged and logged[0] > EVERY, f"the restart did not resume from a checkpoint:\n{out[-3000:]}"
  assert_bitwise_equal(final_params(workdir), final_params(ref_dir))
  steps = [row["step"] for row in read_metrics(os.path.join(workdir, "metrics.jsonl"))]
  assert steps == sorted(set(steps)), f"metrics.jsonl repeats or reorders steps after the resume: {steps}"


def corrupt(step_dir, how):
  for path in glob.glob(os.path.join(step_dir, "state", "ocdbt.process_0", "d", "*")):
    size = os.path.getsize(path)
    if how == "truncate":
      os.truncate(path, size // 2)
    else:
      with open(path, "r+b") as f:
        f.seek(size // 3)
        f.write(np.random.default_rng(0).bytes(max(1, size // 3)))


def fresh_state(c, mesh_shape):
  c.mesh.data, c.mesh.fsdp, c.mesh.tensor = mesh_shape
  model, tx = Transformer(c.model), state_lib.make_optimizer(c.optim, c.train.num_steps)
  mesh, rules = mesh_lib.create_mesh(c.mesh), mesh_lib.axis_rules(c)
  state, shardings = state_lib.create_state(model, tx, mesh, rules, jax.random.key(1), c.data.seq_len)
  return state, shardings, model, mesh, rules


@pytest.mark.parametrize("how", ["truncate", "garbage"])
def test_unreadable_newest_checkpoint_falls_back_to_the_previous_one(reference, tmp_path, caplog, how):
  ref_dir, data_dir = reference
  workdir = str(tmp_path / "run")
  shutil.copytree(ref_dir, workdir)
  corrupt(os.path.join(workdir, "checkpoints", str(STEPS)), how)
  c = run_config(data_dir)
  state, *_ = fresh_state(c, (8, 1, 1))
  data_iter = iter(pipeline.make_dataset(c, loop.data_paths(c, workdir)[0]))
  with caplog.at_level(logging.WARNING):
    restored = checkpoint.restore_latest(checkpoint.make_manager(workdir, c.train), state, data_iter)
  assert int(restored.step) == STEPS - EVERY
  assert f"checkpoint step {STEPS} in" in caplog.text and "cannot be restored" in caplog.text
  expected = final_params(ref_dir, STEPS - EVERY)
  assert_bitwise_equal(flat(jax.device_get(restored.params)), expected)


@pytest.mark.parametrize("how", ["truncate", "garbage"])
def test_a_corrupt_final_checkpoint_is_moved_aside_and_the_cli_run_finishes_bitwise(reference, tmp_path, how):
  """Restarted through unimodal-train: the unreadable step is renamed aside with its reason, the run retrains from
  the previous checkpoint, saves the final step again (no StepAlreadyExistsError), verifies it, and ends bitwise
  equal to the uninterrupted run; a further restart finds it readable and does nothing."""
  ref_dir, data_dir = reference
  workdir = str(tmp_path / "run")
  shutil.copytree(ref_dir, workdir)
  corrupt(os.path.join(workdir, "checkpoints", str(STEPS)), how)
  out = resume_to_the_end(workdir, data_dir)
  assert f"step {STEPS}/{STEPS}" in out
  moved = glob.glob(os.path.join(workdir, checkpoint.UNREADABLE_DIR, f"{STEPS}-*", "REASON.txt"))
  assert len(moved) == 1 and f"checkpoint step {STEPS} could not be restored" in open(moved[0]).read()
  assert_bitwise_equal(final_params(workdir), final_params(ref_dir))
  steps = [row["step"] for row in read_metrics(os.path.join(workdir, "metrics.jsonl"))]
  assert steps == sorted(set(steps)), steps
  again = resume_to_the_end(workdir, data_dir)
  assert not [line for line in again.splitlines() if logged_step(line)], again[-2000:]  # nothing left to train
  assert len(glob.glob(os.path.join(workdir, checkpoint.UNREADABLE_DIR, f"{STEPS}-*"))) == 1


def test_no_readable_checkpoint_through_the_cli_exits_1_with_the_error_last(reference, tmp_path):
  ref_dir, data_dir = reference
  workdir = str(tmp_path / "run")
  shutil.copytree(ref_dir, workdir)
  for step in (STEPS - EVERY, STEPS):
    corrupt(os.path.join(workdir, "checkpoints", str(step)), "truncate")
  proc = start_training(workdir, data_dir)
  out, _ = proc.communicate(timeout=600)
  assert proc.returncode == 1, out[-3000:]
  last = [line for line in out.splitlines() if line.strip()][-1]
  assert "NoValidCheckpointError: none of the checkpoints [24, 16]" in last, out[-3000:]
  assert "Event loop is closed" not in out
  assert sorted(committed_steps(workdir)) == [STEPS - EVERY, STEPS]  # left in place, not moved or deleted


def test_no_readable_checkpoint_is_an_error_not_a_fresh_start(reference, tmp_path):
  ref_dir, data_dir = reference
  workdir = str(tmp_path / "run")
  shutil.copytree(ref_dir, workdir)
  for step in (STEPS - EVERY, STEPS):
    corrupt(os.path.join(workdir, "checkpoints", str(step)), "truncate")
  c = run_config(data_dir)
  state, *_ = fresh_state(c, (8, 1, 1))
  data_iter = iter(pipeline.make_dataset(c, loop.data_paths(c, workdir)[0]))
  with pytest.raises(checkpoint.NoValidCheckpointError, match=r"none of the checkpoints \[24, 16\]"):
    checkpoint.restore_latest(checkpoint.make_manager(workdir, c.train), state, data_iter)


def test_checkpoint_saved_on_8x1x1_restores_onto_2x2x2_with_the_same_next_loss(reference):
  ref_dir, data_dir = reference
  c = run_config(data_dir)
  vocab = from_config(c)
  batch = batches.random_batch(np.random.default_rng(0), vocab, c.train.batch_size, c.data.seq_len,
                               vocab_lib.image_tokens_per_image(c))
  losses = {}
  for shape in ((8, 1, 1), (2, 2, 2)):
    state, shardings, model, mesh, rules = fresh_state(c, shape)
    data_iter = iter(pipeline.make_dataset(c, loop.data_paths(c, ref_dir)[0]))
    state = checkpoint.restore_latest(checkpoint.make_manager(ref_dir, c.train), state, data_iter)
    assert state.params["layers"]["mlp"]["wo"].sharding == shardings.params["layers"]["mlp"]["wo"]
    with mesh_lib.mesh_context(mesh, rules):
      loss = jax.jit(lambda p, b: step_lib.loss_fn(p, b, model=model, vocab=vocab, z_loss=c.model.z_loss)[0])(
          state.params, mesh_lib.global_batch(batch, mesh))
    losses[shape] = float(loss)
  assert losses[(8, 1, 1)] == pytest.approx(losses[(2, 2, 2)], rel=1e-6), losses


def test_wsd_decay_branched_off_a_stable_phase_checkpoint_equals_the_full_run(tmp_path):
  data_dir = str(tmp_path / "data")
  wsd = {"optim.schedule": "wsd", "optim.decay_steps": 6, "optim.wsd_decay": "sqrt"}
  full = str(tmp_path / "full")
  loop.train(run_config(data_dir, **wsd, **{"train.num_steps": 20}), full)
  longer = str(tmp_path / "longer")  # same stable phase, decays later; checkpoint at step 14 = 20 - 6
  loop.train(run_config(data_dir, **wsd, **{"train.num_steps": 28, "train.checkpoint_every": 14}), longer)
  branch = str(tmp_path / "branch")
  loop.train(run_config(data_dir, **wsd, **{"train.num_steps": 20, "train.branch_from": os.path.join(
      longer, "checkpoints", "14")}), branch)
  assert_bitwise_equal(final_params(branch, 20), final_params(full, 20))
  longer_end, full_end = final_params(longer, 28), final_params(full, 20)
  assert any(not np.array_equal(longer_end[k], full_end[k]) for k in full_end)  # decaying later changes the result


def test_checkpoint_records_the_data_position_after_the_last_trained_batch(reference):
  """The loop reads ahead (train.prefetch_batches), yet the data state saved with step N is the one after batch N:
  restored into a fresh pipeline, it yields batch N + 1 of an uninterrupted pipeline."""
  ref_dir, data_dir = reference
  c = run_config(data_dir)
  assert c.train.prefetch_batches > 0
  paths, step = loop.data_paths(c, ref_dir)[0], STEPS - EVERY
  uninterrupted = iter(pipeline.make_dataset(c, paths))
  for _ in range(step):
    next(uninterrupted)
  expected, after = next(uninterrupted), next(uninterrupted)
  assert not np.array_equal(expected.tokens, after.tokens)
  resumed = iter(pipeline.make_dataset(c, paths))
  with open(os.path.join(ref_dir, "checkpoints", str(step), "data", "process_0-of-1.json")) as f:
    resumed.set_state(json.load(f))
  jax.tree.map(np.testing.assert_array_equal, next(resumed), expected)


def test_resume_restores_into_the_abstract_state_without_initialising_one(reference, monkeypatch):
  ref_dir, data_dir = reference
  c = run_config(data_dir)

  def no_init(*args, **kwargs):
    raise AssertionError("a resume initialised a train state only to overwrite it")
  monkeypatch.setattr(state_lib, "create_state", no_init)
  monkeypatch.setattr(state_lib, "state_from_params", no_init)
  model, tx = Transformer(c.model), state_lib.make_optimizer(c.optim, c.train.num_steps)
  mesh, rules = mesh_lib.create_mesh(c.mesh), mesh_lib.axis_rules(c)
  data_iter = iter(pipeline.make_dataset(c, loop.data_paths(c, ref_dir)[0]))
  state, abstract = loop.initial_state(c, checkpoint.make_manager(ref_dir, c.train), data_iter, model=model, tx=tx,
                                       mesh=mesh, rules=rules)
  assert int(state.step) == STEPS
  assert [x.sharding for x in jax.tree.leaves(state)] == [x.sharding for x in jax.tree.leaves(abstract)]
  assert_bitwise_equal(flat(jax.device_get(state.params)), final_params(ref_dir))
