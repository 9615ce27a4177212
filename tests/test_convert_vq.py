"""The VQ tokenizer inside the transformers Chameleon export and import (convert/hf_vq.py), checked against
transformers' own ChameleonVQVAE: same codes, same image-token ids, and an exact round trip of the full tokenizer.
"""
import json
import os

import jax
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from unimodal_jax import config as config_lib
from unimodal_jax.convert import hf_chameleon, hf_vq, tensors
from unimodal_jax.data.vocab import from_config
from unimodal_jax.vq import vqgan
from unimodal_jax.vq import weights as vq_weights

torch = pytest.importorskip("torch", reason="the torch extra is not installed")
ChameleonForConditionalGeneration = pytest.importorskip(
    "transformers", reason="the torch extra is not installed").ChameleonForConditionalGeneration

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny():
  """configs/tiny.py (32px images, 8px patches, 64 codes) and a VQGAN that fits it; 32 GroupNorm groups, as
  transformers hard-codes; attention at 8px; beta not the default, to show our decoder config travels."""
  c = config_lib.load_config_file(os.path.join(REPO, "configs", "tiny.py"))
  vq = vqgan.model_config(resolution=32, base_channels=32, channel_multiplier=(1, 1, 2, 2), num_res_blocks=1,
                          attn_resolutions=(8,), latent_channels=16, embed_dim=8, num_embeddings=64, beta=0.5)
  assert (vq.resolution, vqgan.downsampling(vq), vq.num_embeddings) == (c.vq.image_size, c.vq.patch_size,
                                                                         c.vq.num_codes)
  return c, vq


def random_lm_params(m, seed=0):
  from unimodal_jax.model.transformer import Transformer
  from unimodal_jax.train import state as state_lib
  shapes = jax.eval_shape(lambda: state_lib.init_params(Transformer(m), jax.random.key(0)))
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda s: 0.1 * rng.standard_normal(s.shape).astype(np.float32), shapes)


_ENCODERS = {}  # one compile per VQGAN config: each costs seconds on 2 cores


def encode(params, config, pixels_nhwc):
  """Our encoder: (latents, codes) of NHWC pixels."""
  key = json.dumps(vq_weights.config_to_json(config), sort_keys=True)
  if key not in _ENCODERS:
    _ENCODERS[key] = jax.jit(lambda p, x: vqgan.VQGAN(config).apply({"params": p}, x, method=vqgan.VQGAN.encode))
  return _ENCODERS[key](params, pixels_nhwc)


def random_tokenizer(config, pixels_nhwc, seed=0):
  """Random params (norms and biases too); codebook rows are latents of `pixels` plus noise, so that the codes of
  those pixels spread over the codebook (nearest-code ties would make a comparison of codes meaningless)."""
  shapes = jax.eval_shape(lambda: vqgan.init_params(config, jax.random.key(0)))
  rng = np.random.default_rng(seed)
  params = jax.tree.map(lambda s: (rng.standard_normal(s.shape) / np.sqrt(np.prod(s.shape[:-1]))).astype(np.float32),
                        shapes)
  z, _ = encode(params, config, pixels_nhwc)
  z = np.asarray(z).reshape(-1, config.embed_dim)
  rows = z[rng.permutation(len(z))[:config.num_embeddings]]
  params["codebook"] = (rows + 0.01 * rows.std() * rng.standard_normal(rows.shape)).astype(np.float32)
  return params


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
  """A tiny LM exported with a tiny random tokenizer: (run config, vqgan config, tokenizer params, pixels, dir)."""
  c, vq = tiny()
  pixels = np.random.default_rng(1).uniform(-1, 1, (4, 32, 32, 3)).astype(np.float32)
  params = random_tokenizer(vq, pixels)
  root = tmp_path_factory.mktemp("vq")
  vq_weights.save_tokenizer(params, vq, str(root / "tokenizer"))
  config = hf_chameleon.to_hf(random_lm_params(c.model), c.model, from_config(c), str(root / "hf"),
                              vq_tokenizer_dir=str(root / "tokenizer"))
  assert config["vq_config"]["num_embeddings"] == 64
  return c, vq, params, pixels, str(root / "hf")


def test_transformers_loads_our_encoder_and_gives_our_codes_and_image_ids(exported):
  c, vq, params, pixels, hf_dir = exported
  model, info = ChameleonForConditionalGeneration.from_pretrained(hf_dir, output_loading_info=True)
  assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
  _, codes = encode(params, vq, pixels)
  codes = np.asarray(codes).reshape(len(pixels), -1)
  assert len(np.unique(codes)) > 16
  with torch.no_grad():
    nchw = torch.from_numpy(pixels.transpose(0, 3, 1, 2).copy())
    theirs = model.eval().model.vqmodel.encode(nchw).image_tokens.numpy().reshape(len(pixels), -1)
    image_ids = model.get_image_tokens(nchw).numpy()
  np.testing.assert_array_equal(theirs, codes)
  # the export keeps our ids (identity layout), so transformers' image-token ids are our Vocab's ids of the codes
  np.testing.assert_array_equal(image_ids, from_config(c).id_of(codes))


def test_export_import_round_trip_of_the_full_tokenizer_is_bit_exact(exported, tmp_path):
  _, vq, params, _, hf_dir = exported
  index = json.load(open(os.path.join(hf_dir, tensors.INDEX_FILE)))
  assert index["weight_map"]["model.vqmodel.quantize.embedding.weight"] == hf_vq.VQ_SHARD
  assert not any(name.startswith("decoder.") for name in index["weight_map"])
  assert "decoder.up.0.block.1.conv1.weight" in load_file(os.path.join(hf_dir, hf_vq.DECODER_FILE))
  hf_chameleon.from_hf(hf_dir, vq_out=str(tmp_path / "tok"))
  loaded, loaded_config = vq_weights.load_tokenizer(str(tmp_path / "tok"))
  assert loaded_config == vq
  flat, loaded_flat = (jax.tree_util.tree_leaves_with_path(p) for p in (params, loaded))
  assert [k for k, _ in flat] == [k for k, _ in loaded_flat]
  for (key, a), (_, b) in zip(flat, loaded_flat):
    assert np.asarray(a).tobytes() == np.asarray(b).tobytes(), jax.tree_util.keystr(key)


def copy_dir(src, dst, skip=()):
  os.makedirs(dst)
  for name in os.listdir(src):
    if name not in skip:
      with open(os.path.join(src, name), "rb") as f, open(os.path.join(dst, name), "wb") as g:
        g.write(f.read())


def test_a_directory_transformers_saved_imports_encoder_only_and_says_so(exported, tmp_path):
  """transformers keeps no decoder: re-saved by transformers, our export loses it; the encoder comes back exact."""
  _, vq, params, _, hf_dir = exported
  ChameleonForConditionalGeneration.from_pretrained(hf_dir).save_pretrained(str(tmp_path / "hf"))
  assert not hf_vq.has_decoder(str(tmp_path / "hf"))
  with pytest.warns(UserWarning, match="decoder weights are zeros"):
    hf_chameleon.from_hf(str(tmp_path / "hf"), vq_out=str(tmp_path / "tok"))
  loaded, loaded_config = vq_weights.load_tokenizer(str(tmp_path / "tok"))
  assert loaded_config.norm_groups == 32 and loaded_config.beta == 0.25  # vq_config lacks beta: the default
  assert {k: v for k, v in loaded_config.items() if k != "beta"} == {k: v for k, v in vq.items() if k != "beta"}
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(params), jax.tree.leaves(loaded)):
    if path[0].key == "decoder":
      assert not np.any(b), jax.tree_util.keystr(path)
    else:  # encoder, codebook, quant_conv and post_quant_conv (transformers' tensors)
      assert np.asarray(a).tobytes() == np.asarray(b).tobytes(), jax.tree_util.keystr(path)


def rewrite(path, change):
  tensors = load_file(path)
  change(tensors)
  save_file(tensors, path, metadata={"format": "pt"})


BAD = {  # (file, change, the tensor the error must name)
    "encoder shape": (hf_vq.VQ_SHARD, lambda t: t.update({
        "model.vqmodel.encoder.conv_in.weight": t["model.vqmodel.encoder.conv_in.weight"][:16]}),
        "model.vqmodel.encoder.conv_in.weight"),
    "missing codebook": (hf_vq.VQ_SHARD, lambda t: t.pop("model.vqmodel.quantize.embedding.weight"),
                         "model.vqmodel.quantize.embedding.weight"),
    "decoder shape": (hf_vq.DECODER_FILE, lambda t: t.update({
        "decoder.conv_out.bias": np.zeros(4, np.float32)}), "decoder.conv_out.bias"),
    "post_quant_conv differs": (hf_vq.DECODER_FILE, lambda t: t["post_quant_conv.bias"].fill(3.0),
                                "post_quant_conv.bias"),
}


@pytest.mark.parametrize("case", BAD)
def test_bad_vq_tensor_is_refused_naming_it(exported, tmp_path, case):
  filename, change, name = BAD[case]
  copy_dir(exported[-1], tmp_path / "hf")
  rewrite(str(tmp_path / "hf" / filename), change)
  with pytest.raises(hf_chameleon.ConversionError, match=name.replace(".", r"\.")):
    hf_chameleon.from_hf(str(tmp_path / "hf"), vq_out=str(tmp_path / "tok"))
  assert not os.path.exists(tmp_path / "tok")


def test_a_directory_without_vq_tensors_is_refused(tmp_path):
  c, _ = tiny()
  hf_chameleon.to_hf(random_lm_params(c.model), c.model, from_config(c), str(tmp_path / "hf"))
  with pytest.raises(hf_chameleon.ConversionError, match="no model.vqmodel"):
    hf_chameleon.from_hf(str(tmp_path / "hf"), vq_out=str(tmp_path / "tok"))


def test_tokenizer_transformers_cannot_build_is_refused_before_writing(tmp_path):
  c, _ = tiny()
  vq = vqgan.model_config(resolution=32, base_channels=8, channel_multiplier=(1, 1, 2, 2), num_res_blocks=1,
                          latent_channels=8, embed_dim=8, num_embeddings=64, norm_groups=4)
  shapes = jax.eval_shape(lambda: vqgan.init_params(vq, jax.random.key(0)))
  vq_weights.save_tokenizer(jax.tree.map(lambda s: np.zeros(s.shape, np.float32), shapes), vq, str(tmp_path / "tok"))
  with pytest.raises(hf_chameleon.ConversionError, match="vqgan.norm_groups=4"):
    hf_chameleon.to_hf(random_lm_params(c.model), c.model, from_config(c), str(tmp_path / "hf"),
                       vq_tokenizer_dir=str(tmp_path / "tok"))
  assert not os.path.exists(tmp_path / "hf")


def test_cli_carries_the_tokenizer_both_ways(exported, tmp_path):
  """to-hf --vq_tokenizer on a run's checkpoint, then from-hf --vq_out: the tokenizer comes back bit-exact."""
  import subprocess
  import sys
  import orbax.checkpoint as ocp
  c, vq, params, _, hf_dir = exported
  with ocp.StandardCheckpointer() as saver:
    saver.save(str(tmp_path / "run" / "3" / "state"), {"step": 3, "params": random_lm_params(c.model)})
  vq_weights.save_tokenizer(params, vq, str(tmp_path / "tokenizer"))
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  cli = [sys.executable, "-m", "unimodal_jax.cli.convert"]
  commands = [
      ["to-hf", f"--config={REPO}/configs/tiny.py", f"--checkpoint={tmp_path}/run/3", f"--out_dir={tmp_path}/hf",
       f"--vq_tokenizer={tmp_path}/tokenizer"],
      ["from-hf", f"--hf_dir={tmp_path}/hf", f"--out_dir={tmp_path}/init", f"--vq_out={tmp_path}/tok"]]
  outputs = []
  for command in commands:
    out = subprocess.run(cli + command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    outputs.append(out.stdout)
  assert hf_vq.VQ_SHARD in outputs[0] and "encoder, quantizer and decoder" in outputs[1]
  loaded, _ = vq_weights.load_tokenizer(str(tmp_path / "tok"))
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(loaded)):
    assert np.asarray(a).tobytes() == np.asarray(b).tobytes()
