"""The sharded train step learns: one batch is overfit on the 8-device mesh; the loop around it evaluates and
reports on its own schedules."""
import jax
import numpy as np
import pytest

import batches
from test_model import load_config
from unimodal_jax.data.vocab import from_config
from unimodal_jax.model.transformer import Transformer
from unimodal_jax.parallel import mesh as mesh_lib
from unimodal_jax.train import loop, metrics as metrics_lib, state as state_lib, step as step_lib
from unimodal_jax.data import vocab as vocab_lib


def test_one_batch_is_overfit():
  c = load_config("tiny")
  c.mesh.data, c.mesh.fsdp, c.mesh.tensor = 2, 2, 2
  c.optim.learning_rate, c.optim.warmup_steps, c.optim.weight_decay = 1e-2, 5, 0.0
  steps = 60
  vocab, model = from_config(c), Transformer(c.model)
  mesh, rules = mesh_lib.create_mesh(c.mesh), mesh_lib.axis_rules(c)
  tx = state_lib.make_optimizer(c.optim, steps)
  state, shardings = state_lib.create_state(model, tx, mesh, rules, jax.random.key(0), c.data.seq_len)
  train_step = step_lib.compile_train_step(shardings, mesh, rules, model=model, tx=tx, vocab=vocab, config=c,
                                           schedule=state_lib.make_schedule(c.optim, steps))
  batch = batches.random_batch(np.random.default_rng(0), vocab, c.train.batch_size, c.data.seq_len,
                               vocab_lib.image_tokens_per_image(c))
  losses = []
  with mesh_lib.mesh_context(mesh, rules):
    global_batch = mesh_lib.global_batch(batch, mesh)
    for _ in range(steps):
      state, metrics = train_step(state, global_batch)
      losses.append(float(metrics["loss"]))
  assert int(state.step) == steps
  assert np.all(np.isfinite(losses))
  # Random tokens: the start is ~log(vocab) = 6.5 nats; memorising the batch drives it far below.
  assert losses[0] > 6.0 and losses[-1] < 0.25 * losses[0], losses[::10]


def test_loop_evaluates_on_its_own_schedule_and_reports_compile_time_apart(tmp_path, capsys):
  """Through `loop.train`: eval rows at multiples of eval.every whatever log_every is; compile seconds only in the
  first row and on their own line; rates over row slots = steps x batch x seq_len per interval's stepping time."""
  c = load_config("tiny")
  c.data.dir = str(tmp_path / "data")
  c.train.num_steps, c.train.log_every, c.eval.every, c.train.checkpoint_every = 10, 4, 3, 10
  c.train.peak_tflops_per_device = 2.0
  last = loop.train(c, str(tmp_path / "run"))
  out = capsys.readouterr().out

  rows = {r["step"]: r for r in metrics_lib.read_metrics(str(tmp_path / "run" / "metrics.jsonl"))}
  assert sorted(rows) == [3, 4, 6, 8, 9, 10]
  for step in (3, 6, 9):
    assert rows[step].keys() >= {"eval/loss", "eval/perplexity"}
    assert all(k.startswith("eval/") for k in rows[step] if k != "step"), rows[step].keys()
  for step in (4, 8):
    assert not any(k.startswith("eval/") for k in rows[step])
  assert rows[10].keys() >= {"loss", "eval/loss"} and last["eval/loss"] == rows[10]["eval/loss"]
  assert rows[4]["compile_s/train"] > 0 and rows[4]["compile_s/eval"] > 0
  assert not any(k.startswith("compile_s") for step in (8, 10) for k in rows[step])

  slots_per_step = c.train.batch_size * c.data.seq_len
  for step, steps in ((4, 4), (8, 4), (10, 2)):
    r = rows[step]
    assert r["slot_tokens_per_sec"] * r["step_time"] == pytest.approx(slots_per_step, rel=1e-9)
    assert r["tokens_per_sec"] / r["slot_tokens_per_sec"] == pytest.approx(r["num_tokens"] / (steps * slots_per_step))
    assert r["mfu"] == pytest.approx(r["model_tflops_per_device"] / 2.0)
    assert r["slot_mfu"] == pytest.approx(r["slot_model_tflops_per_device"] / 2.0)

  lines = out.splitlines()
  assert lines.index(next(l for l in lines if l.startswith("compiled the train step in"))) < lines.index(
      next(l for l in lines if l.startswith("step 4/10: loss ")))
  assert [l.split(":")[0] for l in lines if l.startswith("eval at step")] == [
      "eval at step 3/10", "eval at step 6/10", "eval at step 9/10", "eval at step 10/10"]
  assert all(" | ETA " in l for l in lines if l.startswith("step "))
