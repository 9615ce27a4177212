"""Train-step numerics: gradient accumulation equals one big batch, the NaN/Inf guard skips and halts, the WSD
schedule and the weight-decay mask follow their definitions."""
import functools
import glob

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import batches
from test_model import load_config
from unimodal_jax.data.vocab import from_config
from unimodal_jax.model.transformer import Transformer
from unimodal_jax.parallel import mesh as mesh_lib
from unimodal_jax.train import loop, state as state_lib, step as step_lib
from unimodal_jax.data import vocab as vocab_lib


def setup(c, steps=10):
  vocab, model = from_config(c), Transformer(c.model)
  mesh, rules = mesh_lib.create_mesh(c.mesh), mesh_lib.axis_rules(c)
  tx = state_lib.make_optimizer(c.optim, steps)
  state, shardings = state_lib.create_state(model, tx, mesh, rules, jax.random.key(0), c.data.seq_len)
  batch = batches.random_batch(np.random.default_rng(0), vocab, c.train.batch_size, c.data.seq_len,
                               vocab_lib.image_tokens_per_image(c))
  return vocab, model, mesh, rules, tx, state, shardings, batch


def test_four_microbatches_give_the_big_batch_gradient():
  c = load_config("tiny")
  c.mesh.data, c.mesh.fsdp, c.mesh.tensor = 2, 2, 2
  c.train.batch_size = 16
  vocab, model, mesh, rules, _, state, shardings, batch = setup(c)
  with mesh_lib.mesh_context(mesh, rules):
    global_batch = mesh_lib.global_batch(batch, mesh)
    results = {}
    for accum in (1, 4):
      fn = functools.partial(step_lib.loss_and_grads, model=model, vocab=vocab, z_loss=c.model.z_loss,
                             grad_accum_steps=accum)
      results[accum] = jax.device_get(jax.jit(fn, in_shardings=(shardings.params, mesh_lib.batch_sharding(mesh)))(
          state.params, global_batch))
  (g1, m1), (g4, m4) = results[1], results[4]
  for key in ("loss", "ce_loss", "z_loss", "loss/text", "loss/image", "num_tokens", "num_tokens/image"):
    np.testing.assert_allclose(m4[key], m1[key], rtol=1e-6, err_msg=key)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7), g4, g1)
  assert optax.tree.norm(g1) > 0.1


def test_nonfinite_step_is_skipped_and_counted_and_a_finite_one_resets_the_streak():
  c = load_config("tiny")
  vocab, model, mesh, rules, tx, state, shardings, batch = setup(c)
  train_step = step_lib.compile_train_step(shardings, mesh, rules, model=model, tx=tx, vocab=vocab, config=c,
                                           schedule=state_lib.make_schedule(c.optim, 10))
  poisoned = batch.replace(loss_weights=np.where(batch.loss_weights > 0, np.nan, 0.0).astype(np.float32))
  with mesh_lib.mesh_context(mesh, rules):
    state, _ = train_step(state, mesh_lib.global_batch(batch, mesh))  # past warmup's lr 0
    before = jax.device_get(state)
    state, m = train_step(state, mesh_lib.global_batch(poisoned, mesh))
    after_bad = jax.device_get(state)
    state, m2 = train_step(state, mesh_lib.global_batch(poisoned, mesh))
    state, m3 = train_step(state, mesh_lib.global_batch(batch, mesh))
  assert np.isnan(m["loss"]) and (int(m["skipped_steps"]), int(m["nonfinite_streak"])) == (1, 1)
  same = jax.tree.map(lambda a, b: np.array_equal(a, b), (before.params, before.opt_state),
                      (after_bad.params, after_bad.opt_state))
  assert all(jax.tree.leaves(same)), "a skipped step changed params or optimizer state"
  assert int(after_bad.step) == 2  # the batch was consumed
  assert (int(m2["skipped_steps"]), int(m2["nonfinite_streak"])) == (2, 2)
  assert np.isfinite(m3["loss"]) and (int(m3["skipped_steps"]), int(m3["nonfinite_streak"])) == (2, 0)
  assert not np.array_equal(jax.device_get(state.params["embedding"]), before.params["embedding"])


def test_training_halts_after_max_consecutive_nonfinite_steps(tmp_path, monkeypatch):
  c = load_config("tiny")
  c.train.max_consecutive_nonfinite, c.train.num_steps = 3, 20
  make_dataset = loop.pipeline.make_dataset

  def poisoned(*args, **kwargs):  # every batch's loss weights become NaN
    return make_dataset(*args, **kwargs).map(lambda b: b.replace(loss_weights=b.loss_weights * np.nan))
  monkeypatch.setattr(loop.pipeline, "make_dataset", poisoned)
  with pytest.raises(loop.NonFiniteError, match=r"last 3 steps had NaN/Inf .*max_consecutive_nonfinite=3"):
    loop.train(c, str(tmp_path / "run"))


def test_wsd_schedule_is_warmup_then_constant_then_decay():
  o = load_config("tiny").optim
  o.schedule, o.learning_rate, o.warmup_steps, o.decay_steps, o.end_lr_ratio = "wsd", 1.0, 10, 20, 0.1
  for kind, shape in (("linear", lambda t: t), ("sqrt", np.sqrt)):
    o.wsd_decay = kind
    schedule = state_lib.make_schedule(o, 100)
    lrs = np.array([float(schedule(s)) for s in range(101)])
    np.testing.assert_allclose(lrs[:10], np.arange(10) / 10, atol=1e-7)
    np.testing.assert_allclose(lrs[10:81], 1.0)
    t = (np.arange(80, 101) - 80) / 20
    np.testing.assert_allclose(lrs[80:], 1.0 + (0.1 - 1.0) * shape(t), rtol=1e-6)
  # The stable phase does not depend on the run length: a 100-step run's lr at step s < 80 equals a 200-step run's.
  np.testing.assert_array_equal([float(schedule(s)) for s in range(80)],
                                [float(state_lib.make_schedule(o, 200)(s)) for s in range(80)])


def test_a_resume_with_a_longer_cosine_run_is_flagged_and_a_longer_wsd_stable_phase_is_not():
  """The test_gcs lesson: a run of 4 steps resumed with train.num_steps=6 is not the 6-step run (cosine stretches)."""
  import json
  c = load_config("tiny")
  c.optim.warmup_steps, c.train.num_steps = 2, 4
  previous = json.loads(c.to_json_best_effort())
  c.train.num_steps = 6
  assert state_lib.same_learning_rates(previous, c, 3)  # steps 0-2: warmup and the cosine's peak, the same in both
  assert not state_lib.same_learning_rates(previous, c, 4)  # step 3 was taken at the 4-step run's lower rate
  c.optim.schedule, c.optim.decay_steps, c.train.num_steps = "wsd", 2, 6  # decays at steps 4 (t=0) and 5
  previous = json.loads(c.to_json_best_effort())
  c.train.num_steps = 10
  assert state_lib.same_learning_rates(previous, c, 5)  # resumed before the old decay took effect: the longer run
  assert not state_lib.same_learning_rates(previous, c, 6)
  assert state_lib.same_learning_rates({"train": {}}, c, 6)  # a config.json without these keys: nothing to compare


def test_weight_decay_mask_excludes_the_configured_parameter_classes():
  c = load_config("tiny")
  c.model.qkv_bias = True
  params = jax.eval_shape(lambda: state_lib.init_params(Transformer(c.model), jax.random.key(0)))
  classes = {"/".join(k.key for k in path): state_lib.parameter_class(path)
             for path, _ in jax.tree_util.tree_leaves_with_path(params)}
  assert classes["embedding"] == "embeddings" and classes["lm_head"] == "weights"
  assert classes["layers/attn/q_norm/bias"] == "norms" and classes["layers/attn_norm/scale"] == "norms"
  assert classes["layers/attn/q_bias"] == "biases" and classes["layers/mlp/wo"] == "weights"
  mask = state_lib.decay_mask(params, exclude=("norms", "embeddings"))
  assert not mask["embedding"] and mask["layers"]["attn"]["q_bias"] and not mask["final_norm"]["scale"]


def test_held_out_eval_and_the_profiler_window(tmp_path):
  """eval/* in metrics.jsonl equal the loss of the saved params on the held-out shard's first batches, computed
  here batch by batch; the profiler writes a trace for the configured steps."""
  from unimodal_jax.convert.checkpoint import load_all, read_params
  from unimodal_jax.data import embedded
  from unimodal_jax.train import metrics as metrics_lib
  c = load_config("tiny")
  c.train.num_steps, c.train.log_every, c.eval.every, c.eval.num_batches = 6, 3, 3, 2
  c.train.profile_start_step, c.train.profile_num_steps = 1, 2
  workdir = str(tmp_path / "run")
  loop.train(c, workdir)
  rows = metrics_lib.read_metrics(f"{workdir}/metrics.jsonl")
  assert [r["step"] for r in rows] == [3, 6] and all("eval/loss/text" in r for r in rows)
  assert glob.glob(f"{workdir}/profile/plugins/profile/*/*.xplane.pb")

  held_out = embedded.prepare(c, f"{workdir}/data")[-1:]
  eval_config = c.copy_and_resolve_references()
  eval_config.data.shuffle, eval_config.data.source = False, "shards"
  data = iter(loop.pipeline.make_dataset(eval_config, held_out))
  params = load_all(read_params(f"{workdir}/checkpoints/6"))
  vocab, model = from_config(c), Transformer(c.model)
  losses, weights = [], []
  for _ in range(2):
    batch = next(data)
    loss, _ = step_lib.loss_fn(params, batch, model=model, vocab=vocab, z_loss=c.model.z_loss)
    losses.append(float(loss))
    weights.append(float(batch.loss_weights.sum()))
  expected = np.dot(losses, weights) / np.sum(weights)
  assert rows[-1]["eval/loss"] == pytest.approx(expected, rel=1e-5)
  assert rows[-1]["eval/num_tokens"] == np.sum(weights)
