"""Chunked cross-entropy (model.loss_chunk_size): the head + loss over blocks of positions give the unchunked
path's loss, z-loss, per-modality sums and gradients (fp32), for dense, MoT, tied embeddings and a vocabulary split
over 'tensor' on 8 devices; the full [rows, seq_len, vocab] logits never appear in the compiled step."""
import functools
import re

import jax
import numpy as np
import pytest

import batches
from test_model import load_config
from unimodal_jax.config import ConfigError
from unimodal_jax.data import vocab as vocab_lib
from unimodal_jax.model.transformer import Transformer
from unimodal_jax.parallel import mesh as mesh_lib
from unimodal_jax.train import state as state_lib, step as step_lib
from unimodal_jax.train.validate import validate

Z_LOSS = 1e-2  # large enough that the z-loss term and its gradient matter at fp32 precision
SUM_KEYS = ("ce", "z", "weight", "count", "ce/text", "ce/image", "weight/text", "weight/image")


def setup(name, chunk_size, **model_overrides):
  c = load_config(name)
  c.model.update(loss_chunk_size=chunk_size, **model_overrides)
  vocab = vocab_lib.from_config(c)
  batch = batches.random_batch(np.random.default_rng(0), vocab, 4, c.data.seq_len,
                               vocab_lib.image_tokens_per_image(c))
  return c, vocab, batch


def objective_and_grads(c, vocab, params, batch):
  """(loss sums, gradients of the weighted-mean objective), as the train step computes them."""
  model = Transformer(c.model)

  def objective(p):
    sums = step_lib.batch_loss_sums(p, batch, model=model, vocab=vocab, z_loss=Z_LOSS)
    return (sums["ce"] + sums["z"]) / sums["weight"], sums

  (_, sums), grads = jax.jit(jax.value_and_grad(objective, has_aux=True))(params)
  return jax.device_get((sums, grads))


def assert_same(got, want):
  sums, grads = got
  ref_sums, ref_grads = want
  for key in SUM_KEYS:
    np.testing.assert_allclose(sums[key], ref_sums[key], rtol=1e-6, err_msg=key)
  scale = max(float(np.max(np.abs(g))) for g in jax.tree.leaves(ref_grads))
  jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=1e-6, atol=1e-6 * scale), grads, ref_grads)


def init_params(c):
  return state_lib.init_params(Transformer(c.model), jax.random.key(0), c.data.seq_len)


@pytest.mark.parametrize("name, overrides", [
    ("tiny", {}), ("tiny", {"tie_embeddings": True}), ("tiny", {"norm_order": "swin", "remat_policy": "full"}),
    ("mot_tiny", {})], ids=["dense", "tied", "swin_remat", "mot"])
@pytest.mark.parametrize("chunk_size", [16, 64])
def test_chunked_loss_and_grads_equal_unchunked(name, overrides, chunk_size):
  c, vocab, batch = setup(name, 0, **overrides)
  params = init_params(c)
  want = objective_and_grads(c, vocab, params, batch)
  c.model.loss_chunk_size = chunk_size
  assert_same(objective_and_grads(c, vocab, params, batch), want)
  assert want[0]["ce/image"] > 0 and want[0]["ce/text"] > 0  # both modalities present


def sharded_objective_and_grads(c, vocab, params, batch):
  mesh, rules = mesh_lib.create_mesh(c.mesh), mesh_lib.axis_rules(c)
  model = Transformer(c.model)
  param_sh = mesh_lib.logical_to_shardings(state_lib.param_logical_specs(model, c.data.seq_len), mesh, rules)
  with mesh_lib.mesh_context(mesh, rules):
    params = jax.device_put(params, param_sh)
    return objective_and_grads(c, vocab, params, mesh_lib.global_batch(batch, mesh))


@pytest.mark.parametrize("name", ["tiny", "mot_tiny"])
def test_chunked_loss_with_tensor_parallel_vocab_on_8_devices(name):
  """data=2, fsdp=2, tensor=2: the head's vocabulary (and every chunk's logits) split over 'tensor'."""
  c, vocab, batch = setup(name, 0)
  c.mesh.data, c.mesh.fsdp, c.mesh.tensor = 2, 2, 2
  params = init_params(c)
  want = sharded_objective_and_grads(c, vocab, params, batch)
  c.model.loss_chunk_size = 16
  got = sharded_objective_and_grads(c, vocab, params, batch)
  assert_same(got, want)


def logits_shaped_buffers(c, vocab, batch):
  """Shapes [rows, seq_len, vocab] (f32 or bf16) in the optimised HLO of the gradient step."""
  params = init_params(c)
  model = Transformer(c.model)
  grad = jax.jit(jax.grad(lambda p: step_lib.loss_fn(p, batch, model=model, vocab=vocab, z_loss=Z_LOSS)[0]))
  hlo = grad.lower(params).compile().as_text()
  rows, seq_len = batch.tokens.shape
  return re.findall(rf"(?:f32|bf16)\[{rows},{seq_len},{c.model.vocab_size}\]", hlo)


def test_full_logits_never_exist_when_chunked():
  c, vocab, batch = setup("tiny", 0)
  assert logits_shaped_buffers(c, vocab, batch)  # the unchunked step holds them (the check can fail)
  c.model.loss_chunk_size = 16
  assert not logits_shaped_buffers(c, vocab, batch)


@pytest.mark.parametrize("chunk_size", [-16, 48, 65])
def test_chunk_sizes_that_do_not_divide_seq_len_are_rejected_naming_the_key(chunk_size):
  c = load_config("tiny")
  c.model.loss_chunk_size = chunk_size
  with pytest.raises(ConfigError, match=rf"config\.model\.loss_chunk_size: {chunk_size} .*seq_len=64"):
    validate(c, num_devices=8)
