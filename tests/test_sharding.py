"""Sharded training equals single-device training (fp32), on the three foundation meshes, dense and MoT."""
import functools

import jax
import numpy as np
import pytest

import batches
from test_model import load_config
from unimodal_jax.data.vocab import from_config
from unimodal_jax.model.transformer import Transformer
from unimodal_jax.parallel import mesh as mesh_lib
from unimodal_jax.train import state as state_lib, step as step_lib
from unimodal_jax.data import vocab as vocab_lib

MESHES = [(8, 1, 1), (2, 4, 1), (2, 2, 2)]


MODELS = ["tiny", "mot_tiny"]


def mesh_config(shape, name="tiny"):
  c = load_config(name)
  c.mesh.data, c.mesh.fsdp, c.mesh.tensor = shape
  return c


def loss_and_grads(c, mesh, params, batch):
  rules = mesh_lib.axis_rules(c)
  model, vocab = Transformer(c.model), from_config(c)
  param_sh = mesh_lib.logical_to_shardings(state_lib.param_logical_specs(model, c.data.seq_len), mesh, rules)
  fn = jax.value_and_grad(functools.partial(step_lib.loss_fn, model=model, vocab=vocab, z_loss=c.model.z_loss),
                          has_aux=True)
  with mesh_lib.mesh_context(mesh, rules):
    params = jax.device_put(params, param_sh)
    (loss, metrics), grads = jax.jit(fn, in_shardings=(param_sh, mesh_lib.batch_sharding(mesh)))(
        params, mesh_lib.global_batch(batch, mesh))
    assert jax.tree.leaves(grads)[0].sharding.mesh.shape == dict(zip(mesh_lib.MESH_AXES, mesh.devices.shape))
  return jax.device_get((loss, metrics, grads))


@pytest.fixture(scope="module", params=MODELS)
def reference(request):
  c = mesh_config((1, 1, 1), request.param)
  vocab = from_config(c)
  model = Transformer(c.model)
  params = state_lib.init_params(model, jax.random.key(0), c.data.seq_len)
  batch = batches.random_batch(np.random.default_rng(0), vocab, c.train.batch_size, c.data.seq_len,
                               vocab_lib.image_tokens_per_image(c))
  single = mesh_lib.create_mesh(c.mesh, devices=jax.devices()[:1])
  return request.param, params, batch, loss_and_grads(c, single, params, batch)


@pytest.mark.parametrize("shape", MESHES, ids=lambda s: "x".join(map(str, s)))
def test_sharded_loss_and_grads_equal_single_device(reference, shape):
  name, params, batch, (ref_loss, ref_metrics, ref_grads) = reference
  c = mesh_config(shape, name)
  loss, metrics, grads = loss_and_grads(c, mesh_lib.create_mesh(c.mesh), params, batch)
  np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
  for key in ("loss/text", "loss/image"):
    np.testing.assert_allclose(metrics[key], ref_metrics[key], rtol=1e-5)
  jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=1e-5, atol=1e-6), grads, ref_grads)


def test_params_are_sharded_as_the_rules_say():
  """FSDP shards `embed` over 'fsdp', tensor parallelism shards heads/mlp/vocab over 'tensor'."""
  c = mesh_config((2, 2, 2))
  mesh = mesh_lib.create_mesh(c.mesh)
  tx = state_lib.make_optimizer(c.optim, 10)
  state, _ = state_lib.create_state(Transformer(c.model), tx, mesh, mesh_lib.axis_rules(c), jax.random.key(0),
                                    c.data.seq_len)
  spec = lambda x: tuple(x.sharding.spec)  # noqa: E731
  layers = state.params["layers"]
  assert spec(layers["attn"]["q_kernel"]) == (None, "fsdp", "tensor", None)
  assert spec(layers["mlp"]["wo"]) == (None, "tensor", "fsdp")
  assert spec(state.params["embedding"]) == ("tensor", "fsdp")
  mu = state.opt_state[1][0].mu
  assert spec(mu["layers"]["mlp"]["wi_0"]) == (None, "fsdp", "tensor")
  # Each device holds 1/(fsdp*tensor) of an MLP kernel.
  wi = layers["mlp"]["wi_0"]
  assert wi.addressable_shards[0].data.size == wi.size // 4
