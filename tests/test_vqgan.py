"""VQGAN tokenizer: parity with transformers' ChameleonVQVAE, exact export/import, quantizer math vs numpy."""
import numpy as np
import pytest

import jax
import jax.numpy as jnp
from flax import traverse_util

from unimodal_jax.config import ConfigError, load_config_file
from unimodal_jax.train import vq_loop
from unimodal_jax.convert import hf_vq
from unimodal_jax.vq import vqgan
from unimodal_jax.vq import weights as vq_weights

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


def _chameleon_vqvae(attn_resolutions, pixels=None):
  """A tiny random ChameleonVQVAE; norms and biases randomised too (transformers initialises them to 1 and 0).

  With `pixels`, codebook rows are latents of those pixels plus noise, so that their codes spread over the codebook.
  """
  config = transformers.ChameleonVQVAEConfig(
      embed_dim=16, num_embeddings=64, latent_channels=24, resolution=32, base_channels=32,
      channel_multiplier=[1, 2], num_res_blocks=2, attn_resolutions=attn_resolutions)
  torch.manual_seed(0)
  model = transformers.ChameleonVQVAE(config).eval()
  with torch.no_grad():
    for name, p in model.named_parameters():
      if "norm" in name or name.endswith("bias"):
        p.copy_(p + 0.1 * torch.randn_like(p))
    if pixels is not None:
      z = model.quant_conv(model.encoder(torch.from_numpy(pixels))).permute(0, 2, 3, 1).reshape(-1, 16)
      rows = z[torch.randperm(z.shape[0])[:64]]
      model.quantize.embedding.weight.copy_(rows + 0.01 * rows.std() * torch.randn_like(rows))
  return config, model


def _random_params(config, seed):
  """Random float32 params of config's shapes, without compiling an init (normal, so norms are not 1 and 0)."""
  shapes = jax.eval_shape(lambda: vqgan.init_params(config, jax.random.key(0)))
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda s: rng.normal(size=s.shape).astype(np.float32), shapes)


@pytest.mark.parametrize("attn_resolutions", [None, [32, 16]], ids=["no_attention", "attention_32_16"])
def test_encoder_and_codes_match_transformers(attn_resolutions, tmp_path):
  from safetensors.numpy import save_file
  pixels = np.random.default_rng(0).uniform(-1, 1, (4, 3, 32, 32)).astype(np.float32)
  hf_config, model = _chameleon_vqvae(attn_resolutions, pixels)
  # as inside a full ChameleonForConditionalGeneration checkpoint (the prefix is stripped on import)
  save_file({"model.vqmodel." + k: v.numpy() for k, v in model.state_dict().items()}, str(tmp_path / "m.safetensors"))
  config = vq_weights.config_from_hf(hf_config.to_dict())
  template = _random_params(config, 1)
  params = hf_vq.import_chameleon(str(tmp_path / "m.safetensors"), template)
  with torch.no_grad():
    out = model.encode(torch.from_numpy(pixels))
    want_z = model.quant_conv(out.last_hidden_state).numpy().transpose(0, 2, 3, 1)
  encode = jax.jit(lambda p, x: vqgan.VQGAN(config).apply({"params": p}, x, method=vqgan.VQGAN.encode))
  z, codes = encode(params, pixels.transpose(0, 2, 3, 1))
  rel = np.linalg.norm(np.asarray(z) - want_z) / np.linalg.norm(want_z)
  assert rel < 1e-5
  np.testing.assert_array_equal(np.asarray(codes).reshape(-1), out.image_tokens.numpy().reshape(-1))
  assert len(np.unique(np.asarray(codes))) > 8


def test_transformers_checkpoint_has_exactly_our_encoder_keys(tmp_path):
  _, model = _chameleon_vqvae([16])
  config = vq_weights.config_from_hf(model.config.to_dict())
  shapes = jax.eval_shape(lambda: vqgan.init_params(config, jax.random.key(0)))
  ours = {vq_weights.torch_key(path) for path in traverse_util.flatten_dict(shapes)}
  theirs = set(model.state_dict())
  assert theirs <= ours
  assert {k.split(".")[0] for k in ours - theirs} == {"decoder"}
  assert "decoder.up.0.block.2.conv1.weight" in ours and "decoder.up.1.upsample.conv.weight" in ours
  model.save_pretrained(str(tmp_path))  # the directory transformers writes
  template = _random_params(config, 0)
  params = hf_vq.import_chameleon(str(tmp_path), template)
  exported = vq_weights.export_state_dict(params)
  for key, value in model.state_dict().items():
    np.testing.assert_array_equal(exported[key], value.numpy(), err_msg=key)
  np.testing.assert_array_equal(params["decoder"]["conv_in"]["kernel"], template["decoder"]["conv_in"]["kernel"])


def test_full_tokenizer_export_import_is_bit_exact(tmp_path):
  config = vqgan.model_config(resolution=16, base_channels=8, channel_multiplier=(1, 2), num_res_blocks=1,
                              attn_resolutions=(8,), latent_channels=8, embed_dim=4, num_embeddings=16, norm_groups=4)
  params = _random_params(config, 3)
  vq_weights.save_tokenizer(params, config, str(tmp_path))
  loaded, loaded_config = vq_weights.load_tokenizer(str(tmp_path))
  assert loaded_config == config
  flat, loaded_flat = (jax.tree_util.tree_leaves_with_path(p) for p in (params, loaded))
  assert [k for k, _ in flat] == [k for k, _ in loaded_flat]
  for (key, a), (_, b) in zip(flat, loaded_flat):
    assert np.asarray(a).tobytes() == np.asarray(b).tobytes(), key


def test_import_names_the_bad_tensor():
  config = vqgan.model_config(resolution=16, base_channels=8, channel_multiplier=(1, 2), num_res_blocks=1,
                              latent_channels=8, embed_dim=4, num_embeddings=16, norm_groups=4)
  params = _random_params(config, 0)
  state = vq_weights.export_state_dict(params)
  state["loss.discriminator.main.0.weight"] = np.zeros((4, 3, 4, 4), np.float32)  # as in taming's vqgan.ckpt
  vq_weights.import_state_dict(state, params)
  state["encoder.conv_in.weight"] = state["encoder.conv_in.weight"][:4]
  with pytest.raises(ValueError, match="encoder.conv_in.weight"):
    vq_weights.import_state_dict(state, params)
  del state["encoder.conv_in.weight"]
  with pytest.raises(KeyError, match="encoder.conv_in.weight"):
    vq_weights.import_state_dict(state, params)


def _numpy_quantizer(z, codebook, beta):
  """The reference: nearest code by explicit distances, losses and gradients written out by hand."""
  flat = z.reshape(-1, z.shape[-1]).astype(np.float64)
  dist = ((flat[:, None, :] - codebook[None].astype(np.float64)) ** 2).sum(-1)
  codes = dist.argmin(1)
  e = codebook[codes]
  n = flat.size
  codebook_loss = np.mean((flat - e) ** 2)
  commitment = beta * np.mean((flat - e) ** 2)
  # d/dz of commitment: 2 beta (z - e) / n; d/de of the codebook loss: -2 (z - e) / n, summed per code
  grad_z = 2 * beta * (flat - e) / n
  grad_codebook = np.zeros_like(codebook, np.float64)
  np.add.at(grad_codebook, codes, -2 * (flat - e) / n)
  return codes.reshape(z.shape[:-1]), codebook_loss, commitment, grad_z.reshape(z.shape), grad_codebook


def test_quantizer_losses_and_straight_through_gradients_match_numpy():
  rng = np.random.default_rng(0)
  z = rng.normal(size=(2, 3, 3, 4)).astype(np.float32)
  codebook = rng.normal(size=(6, 4)).astype(np.float32)
  weights = rng.normal(size=z.shape).astype(np.float32)
  codes, cb, commit, grad_z, grad_codebook = _numpy_quantizer(z, codebook, 0.25)

  def losses(z, codebook):
    z_q, codes, codebook_loss, commitment_loss = vqgan.quantize(z, codebook, 0.25)
    return jnp.sum(weights * z_q) + codebook_loss + commitment_loss, (codes, codebook_loss, commitment_loss)

  (gz, gc), (got_codes, got_cb, got_commit) = jax.grad(losses, argnums=(0, 1), has_aux=True)(z, codebook)
  np.testing.assert_array_equal(np.asarray(got_codes), codes)
  np.testing.assert_allclose(float(got_cb), cb, rtol=1e-5)
  np.testing.assert_allclose(float(got_commit), commit, rtol=1e-5)
  # straight-through: the decoder's gradient passes to z unchanged (the `weights` term), plus commitment's
  np.testing.assert_allclose(np.asarray(gz), weights + grad_z, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(np.asarray(gc), grad_codebook, rtol=1e-5, atol=1e-6)


def test_perceptual_loss_without_weights_is_a_config_error():
  config = load_config_file("configs/vq_tiny.py")
  config.vq_train.perceptual_weight = 0.1
  with pytest.raises(ConfigError, match="vq_train.perceptual_weights"):
    vq_loop.validate(config)


def test_norm_groups_must_divide_channels():
  with pytest.raises(ValueError, match="vqgan.norm_groups"):
    vqgan.validate(vqgan.model_config(base_channels=48, norm_groups=32))


def test_perceptual_distance_from_user_weights(tmp_path):
  from safetensors.numpy import save_file
  from unimodal_jax.vq import perceptual
  rng = np.random.default_rng(0)
  tensors, in_channels = {}, 3
  for index, channels in zip(perceptual.CONVS, perceptual.CHANNELS):
    tensors[f"features.{index}.weight"] = (rng.normal(size=(channels, in_channels, 3, 3)) /
                                           np.sqrt(9 * in_channels)).astype(np.float32)
    tensors[f"features.{index}.bias"] = np.zeros(channels, np.float32)
    in_channels = channels
  save_file(tensors, str(tmp_path / "vgg.safetensors"))
  weights = perceptual.load_weights(str(tmp_path / "vgg.safetensors"))
  a = rng.uniform(-1, 1, (2, 16, 16, 3)).astype(np.float32)
  b = np.clip(a + rng.normal(scale=0.3, size=a.shape), -1, 1).astype(np.float32)
  d = jax.jit(perceptual.distance)(weights, jnp.asarray(np.concatenate([a, a])), jnp.asarray(np.concatenate([a, b])))
  assert np.allclose(np.asarray(d[:2]), 0.0) and np.all(np.asarray(d[2:]) > 0)
  del tensors["features.28.bias"]
  save_file(tensors, str(tmp_path / "partial.safetensors"))
  with pytest.raises(KeyError, match="features.28.bias"):
    perceptual.load_weights(str(tmp_path / "partial.safetensors"))
