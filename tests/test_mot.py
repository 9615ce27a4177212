"""Mixture-of-Transformers: routing by modality, grouped (ragged) matmuls against the masked oracle,
upcycling from a dense model, and the text-only invariance of the image expert."""
import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import batches
from test_model import load_config
from unimodal_jax.data import pipeline
from unimodal_jax.data.batch import PackedBatch
from unimodal_jax.data.vocab import IMAGE, from_config
from unimodal_jax.model import experts
from unimodal_jax.model.transformer import Transformer, batch_inputs
from unimodal_jax.train import checkpoint, loop, metrics as metrics_lib, state as state_lib
from unimodal_jax.train.step import loss_fn
from unimodal_jax.data import vocab as vocab_lib


def init(model_config, seq_len, seed=0):
  model = Transformer(model_config)
  return model, state_lib.init_params(model, jax.random.key(seed), seq_len)


def with_impl(c, impl):
  m = c.model.copy_and_resolve_references()
  m.mot_impl = impl
  return m


def mixed_batch(c, vocab):
  """Random interleaved rows plus a text-only row and a row made only of image codes."""
  rng = np.random.default_rng(0)
  b = batches.random_batch(rng, vocab, 4, c.data.seq_len, vocab_lib.image_tokens_per_image(c))
  tokens = np.array(b.tokens)
  tokens[2] = np.where(b.segment_ids[2] > 0, rng.integers(3, vocab.text_size, c.data.seq_len), 0)
  tokens[3] = vocab.id_of(rng.integers(0, vocab.num_image_codes, c.data.seq_len))
  segment_ids, weights = np.array(b.segment_ids), np.array(b.loss_weights)
  segment_ids[3], weights[3] = 1, 1.0
  positions = np.array(b.positions)
  positions[3] = np.arange(c.data.seq_len)
  targets = np.array(b.targets)
  targets[2:] = np.roll(tokens[2:], -1, axis=1)
  batch = PackedBatch(tokens=tokens, targets=targets, segment_ids=segment_ids, positions=positions,
                      modality=vocab.modality(tokens), loss_weights=weights)
  assert batch.modality[2].max() == 0 and batch.modality[3].min() == 1
  return batch


@pytest.fixture(scope="module")
def mot():
  c = load_config("mot_tiny")
  return c, from_config(c), mixed_batch(c, from_config(c))


def loss_and_grads(model, params, batch, vocab):
  return jax.value_and_grad(lambda p: loss_fn(p, batch, model=model, vocab=vocab, z_loss=1e-4)[0])(params)


def test_every_untied_group_has_an_expert_axis(mot):
  c, _, _ = mot
  specs = state_lib.param_logical_specs(Transformer(c.model), c.data.seq_len)
  flat = {jax.tree_util.keystr(k): tuple(v) for k, v in jax.tree_util.tree_leaves_with_path(
      specs, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))}
  with_expert = {k for k, v in flat.items() if "expert" in v}
  assert not any("embedding" in k or "lm_head" in k for k in with_expert)
  for name in ("q_kernel", "o_kernel", "q_norm", "k_norm", "wi_0", "wo", "attn_norm", "mlp_norm", "final_norm"):
    assert any(name in k for k in with_expert), name


@pytest.mark.parametrize("impl", experts.IMPLEMENTATIONS)
def test_upcycled_mot_equals_dense(mot, impl):
  """With every expert a copy of the dense weights, MoT logits and loss are the dense model's."""
  c, vocab, batch = mot
  dense_config = c.model.copy_and_resolve_references()
  dense_config.num_experts = 1
  dense, dense_params = init(dense_config, c.data.seq_len)
  model = Transformer(with_impl(c, impl))
  specs = state_lib.param_logical_specs(model, c.data.seq_len)
  params = experts.upcycle(dense_params, specs, c.model.num_experts)
  np.testing.assert_allclose(model.apply({"params": params}, **batch_inputs(batch)), dense.apply({"params": dense_params}, **batch_inputs(batch)),
                             rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(loss_fn(params, batch, model=model, vocab=vocab, z_loss=1e-4)[0],
                             loss_fn(dense_params, batch, model=dense, vocab=vocab, z_loss=1e-4)[0], rtol=1e-6)


def test_grouped_equals_masked_oracle(mot):
  c, vocab, batch = mot
  grouped, params = init(with_impl(c, "grouped"), c.data.seq_len)
  masked = Transformer(with_impl(c, "masked"))
  loss_g, grads_g = loss_and_grads(grouped, params, batch, vocab)
  loss_m, grads_m = loss_and_grads(masked, params, batch, vocab)
  np.testing.assert_allclose(grouped.apply({"params": params}, **batch_inputs(batch)), masked.apply({"params": params}, **batch_inputs(batch)),
                             rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(loss_g, loss_m, rtol=1e-6)
  jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=1e-5, atol=1e-7), grads_g, grads_m)


def image_expert(params, specs):
  """The image expert's slice of every untied weight (None for tied ones)."""
  def one(x, spec):
    if "expert" not in tuple(spec):
      return None
    return jnp.take(x, IMAGE, axis=tuple(spec).index("expert"))
  return jax.tree.map(one, params, specs)


@pytest.mark.parametrize("impl", experts.IMPLEMENTATIONS)
def test_text_only_batch_never_touches_the_image_expert(mot, impl):
  c, vocab, _ = mot
  model, params = init(with_impl(c, impl), c.data.seq_len)
  specs = state_lib.param_logical_specs(model, c.data.seq_len)
  rng = np.random.default_rng(1)
  docs = [batches.random_document(rng, vocab, 30, 0, 0) for _ in range(4)]
  batch = batches.pack_rows([[d] for d in docs], c.data.seq_len, vocab)
  assert batch.modality.max() == 0 and vocab.modality(batch.targets).max() == 0
  _, grads = loss_and_grads(model, params, batch, vocab)
  image_grads = jax.tree.leaves(image_expert(grads, specs))
  assert len(image_grads) == len(jax.tree.leaves(image_expert(params, specs))) > 10
  for g in image_grads:
    assert np.all(np.asarray(g) == 0.0)
  # Changing every image-expert weight changes nothing, bit for bit.
  def perturb(x, spec):
    if "expert" not in tuple(spec):
      return x
    axis = tuple(spec).index("expert")
    noise = jax.random.normal(jax.random.key(7), x.shape)
    return jnp.where(jnp.arange(x.shape[axis]).reshape([-1 if i == axis else 1 for i in range(x.ndim)]) == IMAGE,
                     x + noise, x)
  perturbed = jax.tree.map(perturb, params, specs)
  np.testing.assert_array_equal(model.apply({"params": params}, **batch_inputs(batch)), model.apply({"params": perturbed}, **batch_inputs(batch)))


def test_training_runs_start_from_a_dense_checkpoint(tmp_path):
  """`train.upcycle_from` (MoT) and `train.init_from` (dense): each run's first loss is the dense
  checkpoint's loss on the same batch."""
  dense_dir, mot_dir, again_dir = tmp_path / "dense", tmp_path / "mot", tmp_path / "again"
  dense_config = load_config("tiny")
  dense_config.train.num_steps, dense_config.train.checkpoint_every = 3, 3
  loop.train(dense_config, str(dense_dir))
  c = load_config("mot_tiny")
  c.data.dir = str(dense_dir / "data")
  c.train.num_steps, c.train.log_every = 1, 1
  c.train.upcycle_from = str(dense_dir / "checkpoints" / "3")
  loop.train(c, str(mot_dir))
  first_loss = metrics_lib.read_metrics(str(mot_dir / "metrics.jsonl"))[0]["loss"]

  dense = Transformer(dense_config.model)
  shardings = jax.tree.map(lambda _: jax.sharding.SingleDeviceSharding(jax.devices()[0]),
                           state_lib.param_logical_specs(dense, c.data.seq_len),
                           is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))
  dense_params = checkpoint.restore_params(c.train.upcycle_from,
                                           state_lib.abstract_params(dense, c.data.seq_len, shardings))
  batch = next(iter(pipeline.make_dataset(c, loop.data_paths(c, str(mot_dir))[0])))
  expected = loss_fn(dense_params, batch, model=dense, vocab=from_config(c), z_loss=c.model.z_loss)[0]
  assert not np.isclose(expected, loss_fn(init(dense_config.model, c.data.seq_len)[1], batch, model=dense,
                                          vocab=from_config(c), z_loss=c.model.z_loss)[0])  # 3 steps moved it
  np.testing.assert_allclose(first_loss, expected, rtol=1e-5)
  assert os.path.isdir(mot_dir / "checkpoints" / "1")

  dense_config.data.dir = c.data.dir
  dense_config.train.num_steps, dense_config.train.log_every = 1, 1
  dense_config.train.init_from = c.train.upcycle_from
  loop.train(dense_config, str(again_dir))
  np.testing.assert_allclose(metrics_lib.read_metrics(str(again_dir / "metrics.jsonl"))[0]["loss"], expected,
                             rtol=1e-5)


@pytest.mark.parametrize("mesh", [(8, 1, 1), (2, 2, 2)], ids=["data8", "data2_fsdp2_tensor2"])
def test_grouped_mot_has_dense_flops_on_tpu(mesh):
  """AOT-compiled for 8 TPU v5e chips (libtpu, no TPU): the grouped MoT train step costs the dense
  model's FLOPs (within 10%), also with FSDP and tensor parallelism; the masked oracle, which runs both
  experts on every token, does not."""
  pytest.importorskip("libtpu", reason="the tpu extra is not installed")
  from unimodal_jax.plan import aot, topology
  devices = topology.tpu_devices("v5e-8")

  def step_flops(num_experts, impl):
    c = load_config("tiny")
    # The TPU kernel's tiles are 128 on every side: 128 rows per device, 128-multiple features per shard.
    c.data.seq_len, c.model.embed_dim, c.model.mlp_dim = 128, 256, 512
    c.model.num_heads, c.model.num_kv_heads, c.model.head_dim = 8, 8, 32
    c.mesh.data, c.mesh.fsdp, c.mesh.tensor = mesh
    c.model.num_experts, c.model.mot_impl = num_experts, impl
    return aot.lower_train_step(c, devices).compile().cost_analysis()["flops"]

  dense = step_flops(1, "grouped")
  assert step_flops(2, "grouped") / dense < 1.10
  if mesh == (8, 1, 1):
    assert step_flops(2, "masked") / dense > 1.3
