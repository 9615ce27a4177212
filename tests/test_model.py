"""The dense early-fusion model: attention masking, packing invariance, norm orders, overfitting."""
import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import batches
from unimodal_jax import config as config_lib
from unimodal_jax.data import pipeline
from unimodal_jax.data.vocab import from_config
from unimodal_jax.model.loss import token_losses
from unimodal_jax.model.transformer import Transformer, apply_rope, batch_inputs
from unimodal_jax.train import state as state_lib
from unimodal_jax.train.step import loss_fn
from unimodal_jax.data import vocab as vocab_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_config(name):
  return config_lib.load_config_file(os.path.join(REPO, "configs", f"{name}.py"))


@pytest.fixture(scope="module")
def tiny():
  c = load_config("tiny")
  vocab = from_config(c)
  model = Transformer(c.model)
  return c, vocab, model, state_lib.init_params(model, jax.random.key(0), c.data.seq_len)


def image_len(c):
  return vocab_lib.image_tokens_per_image(c)


def test_future_tokens_do_not_change_past_logits(tiny):
  c, vocab, model, params = tiny
  batch = batches.random_batch(np.random.default_rng(0), vocab, 2, c.data.seq_len, image_len(c), docs_per_row=1)
  logits = model.apply({"params": params}, **batch_inputs(batch))
  changed = batch.tokens.copy()
  changed[:, 30:] = 5
  logits2 = model.apply({"params": params}, **batch_inputs(batch.replace(tokens=changed)))
  np.testing.assert_allclose(logits[:, :30], logits2[:, :30], rtol=1e-5, atol=1e-5)
  assert not np.allclose(logits[:, 30:], logits2[:, 30:])


def test_documents_in_a_row_do_not_see_each_other(tiny):
  c, vocab, model, params = tiny
  batch = batches.random_batch(np.random.default_rng(1), vocab, 2, c.data.seq_len, image_len(c), docs_per_row=3)
  logits = model.apply({"params": params}, **batch_inputs(batch))
  first = batch.segment_ids == 1
  changed = np.where(first, batch.tokens, 7)  # rewrite every document but the first
  logits2 = model.apply({"params": params}, **batch_inputs(batch.replace(tokens=changed)))
  np.testing.assert_allclose(logits[first], logits2[first], rtol=1e-5, atol=1e-5)


def test_packed_row_equals_documents_run_alone(tiny):
  """k documents packed by the data pipeline into one row give the per-document losses of k unpacked runs."""
  c, vocab, model, params = tiny
  rng = np.random.default_rng(2)
  docs = [batches.random_document(rng, vocab, n, 1, image_len(c)) for n in (25, 19, 21)]
  (packed,) = pipeline.pack_documents(docs, vocab, c.data.seq_len, batch_size=1)
  assert packed.segment_ids.max() == len(docs)

  def per_document_losses(batch):
    ce, _ = token_losses(model.apply({"params": params}, **batch_inputs(batch)), batch.targets, 0.0)
    ce = np.asarray(ce * batch.loss_weights)
    return [ce[batch.segment_ids == s].sum() for s in range(1, batch.segment_ids.max() + 1)]

  alone = [per_document_losses(b)[0] for d in docs for b in pipeline.pack_documents([d], vocab, c.data.seq_len, 1)]
  np.testing.assert_allclose(per_document_losses(packed), alone, rtol=1e-5)


def test_rope_is_relative(tiny):
  """Rotate-half RoPE: q.k depends only on the position difference."""
  rng = np.random.default_rng(3)
  q, k = rng.normal(size=(2, 1, 1, 1, 16)).astype(np.float32)
  dots = [float(jnp.sum(apply_rope(q, jnp.array([[p]]), 1e4) * apply_rope(k, jnp.array([[p - 5]]), 1e4)))
          for p in (5, 9, 40)]
  np.testing.assert_allclose(dots, dots[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("overrides", [
    {"norm_order": "swin"}, {"qk_norm": "rmsnorm", "qkv_bias": True}, {"qk_norm": "none", "tie_embeddings": True},
    {"remat_policy": "full"}, {"num_kv_heads": 1}])
def test_model_variants_run_and_remat_matches(tiny, overrides):
  """Every variant trains (finite loss and grads); remat changes memory, not numbers."""
  c, vocab, _, _ = tiny
  mc = c.model.copy_and_resolve_references()
  mc.update(overrides)
  model = Transformer(mc)
  params = state_lib.init_params(model, jax.random.key(0), c.data.seq_len)
  batch = batches.random_batch(np.random.default_rng(4), vocab, 2, c.data.seq_len, image_len(c))
  grad = jax.grad(lambda p: loss_fn(p, batch, model=model, vocab=vocab, z_loss=1e-4)[0])
  grads = grad(params)
  assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grads))
  if overrides == {"remat_policy": "full"}:
    plain = Transformer(c.model)
    ref = jax.grad(lambda p: loss_fn(p, batch, model=plain, vocab=vocab, z_loss=1e-4)[0])(params)
    jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=1e-5, atol=1e-7), grads, ref)
