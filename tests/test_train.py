"""The sharded train step learns: one batch is overfit on the 8-device mesh."""
import jax
import numpy as np

import batches
from test_model import load_config
from unimodal_jax.data.vocab import from_config
from unimodal_jax.model.transformer import Transformer
from unimodal_jax.parallel import mesh as mesh_lib
from unimodal_jax.train import state as state_lib, step as step_lib
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
