"""Conversion to and from transformers' ChameleonForConditionalGeneration, checked against transformers itself.

transformers' Chameleon forward overwrites the logits of image tokens with the dtype minimum (it shipped for
image understanding), so its full logits are taken here as its `lm_head` applied to the last hidden state.
Everything runs in float32; parity means max |ours - theirs| / max |theirs| < 1e-5.
"""
import json
import os
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from safetensors.numpy import load_file, save_file

import batches
from unimodal_jax import config as config_lib
from unimodal_jax.convert import checkpoint, hf_chameleon, tensors, vocab_map
from unimodal_jax.data.vocab import BOS_ID, EOS_ID, PAD_ID, from_config
from unimodal_jax.model.transformer import Transformer, batch_inputs
from unimodal_jax.train import checkpoint as train_checkpoint, state as state_lib

torch = pytest.importorskip("torch", reason="the torch extra is not installed")
ChameleonConfig = pytest.importorskip("transformers").ChameleonConfig
ChameleonForConditionalGeneration = pytest.importorskip("transformers").ChameleonForConditionalGeneration

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEQ_LEN = 48
IMAGE_LEN = 18  # <boi> + 16 codes + <eoi>
TINY_VQ = {"embed_dim": 4, "num_embeddings": 64, "latent_channels": 4, "base_channels": 32,
           "channel_multiplier": [1, 2], "resolution": 32}  # a small VQ encoder: transformers builds it on load


def load_config(name):
  return config_lib.load_config_file(os.path.join(REPO, "configs", f"{name}.py"))


def model_config(**overrides):
  m = load_config("tiny").model
  m.update(overrides)
  return m


def random_params(m, seed=0):
  """Random params of our model's shapes (numpy): every leaf N(0, 0.1^2), norm scales around 1."""
  shapes = jax.eval_shape(lambda: state_lib.init_params(Transformer(m), jax.random.key(0)))
  rng = np.random.default_rng(seed)

  def leaf(path, shape):
    x = 0.1 * rng.standard_normal(shape.shape).astype(np.float32)
    return x + 1.0 if path[-1].key == "scale" else x

  return jax.tree_util.tree_map_with_path(leaf, shapes)


def parity_batch(vocab, seed=0):
  """Row 0 text only, row 1 text with two images (<boi> codes <eoi>): [2, SEQ_LEN] of our ids."""
  rng = np.random.default_rng(seed)
  text = rng.integers(3, vocab.text_size, SEQ_LEN + 1).astype(np.int32)
  interleaved = batches.random_document(rng, vocab, SEQ_LEN + 1, 2, IMAGE_LEN)
  assert vocab.is_image(interleaved).sum() > 0
  return batches.pack_rows([[text], [interleaved]], SEQ_LEN, vocab)


def our_logits(params, m, batch):
  return np.asarray(jax.jit(Transformer(m).apply)({"params": params}, **batch_inputs(batch)))


def transformers_logits(hf_model, hf_ids):
  """Full logits: lm_head on the last hidden state (the forward's own logits hide image tokens)."""
  with torch.no_grad():
    hidden = hf_model.model(input_ids=torch.from_numpy(hf_ids.astype(np.int64))).last_hidden_state
    return hf_model.lm_head(hidden).numpy()


def assert_same_logits(ours, theirs_in_our_order):
  for row, kind in enumerate(("text-only", "interleaved")):
    error = np.abs(ours[row] - theirs_in_our_order[row]).max() / np.abs(theirs_in_our_order[row]).max()
    assert error < 1e-5, f"{kind} row: relative logit error {error:.2e}"


def assert_parity(params, m, vocab, hf_dir):
  """Our logits equal those of transformers' model loaded from `hf_dir`, whose ids `hf_dir`'s layout gives."""
  hf_model = ChameleonForConditionalGeneration.from_pretrained(hf_dir).eval()
  config = tensors.read_config(hf_dir)
  hf_id_of, hf_vocab = vocab_map.permutation(vocab_map.layout_from_config(config))
  assert hf_vocab == vocab
  vmap = config["vocabulary_map"]  # our <pad>, <bos>, <eos>, <boi>, <eoi> are its pad, bos, eos, break, eoss
  assert hf_id_of[[PAD_ID, BOS_ID, EOS_ID, vocab.boi_id, vocab.eoi_id]].tolist() == [
      config["pad_token_id"], config["bos_token_id"], config["eos_token_id"], vmap["<racm3:break>"], vmap["<eoss>"]]
  mapping = hf_model.model.vocabulary_mapping  # transformers' own reading of the image tokens
  codes = np.arange(vocab.num_image_codes)
  assert [mapping.img2bpe[c] for c in codes] == hf_id_of[vocab.id_of(codes)].tolist()
  batch = parity_batch(vocab)
  theirs = transformers_logits(hf_model, hf_id_of[batch.tokens])
  assert_same_logits(our_logits(params, m, batch), theirs[..., hf_id_of])


EXPORT_CASES = {
    "mha": {"num_kv_heads": 4},
    "gqa_swin": {"num_kv_heads": 2, "norm_order": "swin"},
    "mqa_tied_qkv_bias": {"num_kv_heads": 1, "tie_embeddings": True, "qkv_bias": True},
    "gqa_qkv_bias_swin": {"num_kv_heads": 2, "qkv_bias": True, "norm_order": "swin"},
}


@pytest.mark.parametrize("case", EXPORT_CASES)
def test_exported_model_matches_transformers_logits(tmp_path, case):
  m = model_config(**EXPORT_CASES[case])
  vocab = from_config(load_config("tiny"))
  params = random_params(m)
  hf_chameleon.to_hf(params, m, vocab, str(tmp_path), vq_config=TINY_VQ)
  assert_parity(params, m, vocab, str(tmp_path))


@pytest.mark.parametrize("case", ["gqa_qkv_bias_swin", "mqa_tied_qkv_bias"])
def test_jax_hf_jax_round_trip_is_bit_exact(tmp_path, case):
  m = model_config(**EXPORT_CASES[case])
  vocab = from_config(load_config("tiny"))
  params = random_params(m, seed=1)
  hf_chameleon.to_hf(params, m, vocab, str(tmp_path), vq_config=TINY_VQ, max_shard_bytes=50_000)
  assert len([f for f in os.listdir(tmp_path) if f.endswith(".safetensors")]) > 1  # sharded, with an index
  back, overrides, back_vocab = hf_chameleon.from_hf(str(tmp_path))
  assert back_vocab == vocab
  assert {k: m[k] for k in overrides} == overrides
  assert jax.tree.structure(back) == jax.tree.structure(params)
  for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(params)[0], jax.tree.leaves(back)):
    assert a.dtype == b.dtype and np.array_equal(a, b), jax.tree_util.keystr(path)


@pytest.mark.parametrize("qk_norm", ["none", "rmsnorm"])
def test_qk_norm_transformers_cannot_express_is_refused(tmp_path, qk_norm):
  """transformers' Chameleon always applies a LayerNorm QK-norm: 'none' or 'rmsnorm' would change the logits."""
  m = model_config(qk_norm=qk_norm)
  with pytest.raises(hf_chameleon.ConversionError, match="model.qk_norm"):
    hf_chameleon.to_hf(random_params(m), m, from_config(load_config("tiny")), str(tmp_path))
  assert not os.listdir(tmp_path)


def test_params_that_do_not_fit_the_config_are_refused_naming_the_leaf(tmp_path):
  m = model_config()
  params = random_params(m)
  params["layers"]["attn"]["k_kernel"] = params["layers"]["attn"]["k_kernel"][..., :8]
  with pytest.raises(hf_chameleon.ConversionError, match="layers/attn/k_kernel"):
    hf_chameleon.to_hf(params, m, from_config(load_config("tiny")), str(tmp_path))
  assert not os.listdir(tmp_path)


def test_text_names_and_image_names_follow_chameleon():
  vocab = from_config(load_config("tiny"))
  names = ["<pad>", "<bos>", "<eos>", "hello", "Ġworld"]
  layout = vocab_map.synthetic_layout(vocab, 640, names)
  assert layout.vocabulary_map["Ġworld"] == 4 and layout.vocabulary_map["<text_5>"] == 5
  assert vocab_map.image_token_name(0) == "IMGIMGAZ" and vocab_map.image_token_name(1209) == "IMGIMGBCAJZ"
  assert layout.vocabulary_map["IMGIMGGDZ"] == vocab.id_of(63)
  assert layout.vocabulary_map["<racm3:break>"] == vocab.boi_id and layout.vocabulary_map["<eoss>"] == vocab.eoi_id
  hf_id_of, same = vocab_map.permutation(layout)
  assert same == vocab and np.array_equal(hf_id_of, np.arange(640))  # our ids are its ids on export
  with pytest.raises(ValueError, match="IMGIMG"):
    vocab_map.synthetic_layout(vocab, 640, names + ["IMGIMGAZ"])


def test_defaults_for_missing_config_keys_are_transformers_defaults():
  defaults = ChameleonConfig()
  for key, value in hf_chameleon.HF_DEFAULTS.items():
    assert getattr(defaults, key) == value, key


def scattered_config(tie, attention_bias, swin, seed=0):
  """A ChameleonConfig whose ids are shuffled as a real BPE would place them: <s>, <pad>, </s>, image tokens,
  markers and text anywhere, plus ids with no name (padding rows)."""
  rng = np.random.default_rng(seed)
  num_text, num_codes, num_unnamed = 40, 24, 5
  ids = rng.permutation(num_text + 2 + num_codes + num_unnamed).tolist()
  names = ["<s>", "<pad>", "</s>"] + [f"t{i}" for i in range(num_text - 3)] + ["<racm3:break>", "<eoss>"]
  names += [vocab_map.image_token_name(c) for c in rng.permutation(num_codes)]
  vmap = dict(zip(names, ids))
  return ChameleonConfig(
      vocab_size=len(ids), hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
      num_key_value_heads=2, vocabulary_map=vmap, bos_token_id=vmap["<s>"], pad_token_id=vmap["<pad>"],
      eos_token_id=vmap["</s>"], tie_word_embeddings=tie, attention_bias=attention_bias, swin_norm=swin,
      rope_parameters={"rope_type": "default", "rope_theta": 5000.0}, vq_config=TINY_VQ)


def save_transformers_model(path, **kw):
  """A transformers-initialised random model with random QK-norm weights and biases (and q/k/v biases)."""
  torch.manual_seed(0)
  model = ChameleonForConditionalGeneration(scattered_config(**kw))
  with torch.no_grad():
    for name, p in model.named_parameters():
      if "vqmodel" in name or "o_proj.bias" in name:
        continue
      if "norm" in name:
        p.copy_((1.0 if name.endswith("weight") else 0.0) + 0.1 * torch.randn_like(p))
      elif name.endswith("bias"):
        p.copy_(0.1 * torch.randn_like(p))
  model.save_pretrained(path)


IMPORT_CASES = {"untied": {"tie": False, "attention_bias": False, "swin": False},
                "tied_bias_swin": {"tie": True, "attention_bias": True, "swin": True}}


@pytest.mark.parametrize("case", IMPORT_CASES)
def test_imported_transformers_model_matches_its_logits(tmp_path, case):
  save_transformers_model(tmp_path, **IMPORT_CASES[case])
  params, overrides, vocab = hf_chameleon.from_hf(str(tmp_path))
  assert (vocab.text_size, vocab.num_image_codes) == (40, 24)
  m = model_config(**overrides)
  assert jax.tree.structure(params) == jax.tree.structure(random_params(m))
  assert_parity(params, m, vocab, str(tmp_path))


def test_hf_jax_hf_round_trip_keeps_transformers_ids(tmp_path):
  save_transformers_model(tmp_path / "hf", **IMPORT_CASES["untied"])
  params, overrides, vocab = hf_chameleon.from_hf(str(tmp_path / "hf"))
  original = tensors.read_config(str(tmp_path / "hf"))
  layout = vocab_map.layout_from_config(original)
  config = hf_chameleon.to_hf(params, model_config(**overrides), vocab, str(tmp_path / "out"), layout=layout,
                              vq_config=original["vq_config"])
  assert config["vocabulary_map"] == original["vocabulary_map"]
  before = {k: v for k, v in load_file(str(tmp_path / "hf" / "model.safetensors")).items() if "vqmodel" not in k}
  after = {}
  for name in sorted(os.listdir(tmp_path / "out")):
    if name.endswith(".safetensors"):
      after.update(load_file(str(tmp_path / "out" / name)))
  assert sorted(before) == sorted(after)
  for name, value in before.items():
    assert np.array_equal(value, after[name]), name


def rewrite_tensors(hf_dir, change):
  path = os.path.join(hf_dir, "model.safetensors")
  tensors = load_file(path)
  change(tensors)
  save_file(tensors, path, metadata={"format": "pt"})


BAD_CHECKPOINTS = {
    "missing tensor": (lambda t: t.pop("model.layers.1.self_attn.k_norm.bias"), "model.layers.1.self_attn.k_norm.bias"),
    "wrong shape": (lambda t: t.update({"model.layers.0.mlp.up_proj.weight": t["model.layers.0.mlp.up_proj.weight"].T}),
                    "model.layers.0.mlp.up_proj.weight"),
    "non-zero o_proj bias": (lambda t: t["model.layers.1.self_attn.o_proj.bias"].fill(0.5),
                             "model.layers.1.self_attn.o_proj.bias"),
    "unexpected tensor": (lambda t: t.update({"model.layers.0.mlp.up_proj.bias": np.zeros(96, np.float32)}),
                          "model.layers.0.mlp.up_proj.bias"),
}


@pytest.mark.parametrize("case", BAD_CHECKPOINTS)
def test_bad_checkpoint_is_refused_naming_the_tensor(tmp_path, case):
  save_transformers_model(tmp_path, tie=False, attention_bias=True, swin=False)
  change, tensor_name = BAD_CHECKPOINTS[case]
  rewrite_tensors(str(tmp_path), change)
  with pytest.raises(hf_chameleon.ConversionError, match=tensor_name.replace(".", r"\.")):
    hf_chameleon.from_hf(str(tmp_path))


def test_unknown_architecture_is_refused_naming_the_key(tmp_path):
  save_transformers_model(tmp_path, tie=False, attention_bias=False, swin=False)
  config = tensors.read_config(str(tmp_path))
  config["architectures"] = ["LlamaForCausalLM"]
  (tmp_path / "config.json").write_text(json.dumps(config))
  with pytest.raises(hf_chameleon.ConversionError, match="architectures.*LlamaForCausalLM"):
    hf_chameleon.from_hf(str(tmp_path))


def test_run_checkpoint_streams_out_and_imported_params_restore_into_a_run(tmp_path):
  """to-hf reads a run's TrainState checkpoint leaf by leaf; from-hf's output is what restore_params reads."""
  c = load_config("tiny")
  m, vocab = c.model, from_config(c)
  params = random_params(m)
  state = state_lib.TrainState(step=np.int32(7), params=params, opt_state=state_lib.make_optimizer(c.optim, 10).init(
      params), skipped_steps=np.int32(0), nonfinite_streak=np.int32(0))
  with ocp.StandardCheckpointer() as saver:
    saver.save(str(tmp_path / "run" / "7" / "state"), state)
  lazy = checkpoint.read_params(str(tmp_path / "run" / "7"))
  assert set(lazy) == set(params)
  assert np.array_equal(np.asarray(lazy["layers"]["mlp"]["wo"]), params["layers"]["mlp"]["wo"])
  hf_chameleon.to_hf(lazy, m, vocab, str(tmp_path / "hf"), vq_config=TINY_VQ)

  imported, _, _ = hf_chameleon.from_hf(str(tmp_path / "hf"))
  checkpoint.write_params(imported, str(tmp_path / "init"))
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device), params)
  restored = train_checkpoint.restore_params(str(tmp_path / "init"), abstract)
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(restored)):
    assert np.array_equal(a, np.asarray(b))


def test_cli_exports_a_run_checkpoint_and_self_checks(tmp_path):
  c = load_config("tiny")
  params = random_params(c.model)
  with ocp.StandardCheckpointer() as saver:
    saver.save(str(tmp_path / "run" / "3" / "state"), {"step": 3, "params": params})
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  cmd = [sys.executable, "-m", "unimodal_jax.cli.convert", "to-hf", f"--config={REPO}/configs/tiny.py",
         f"--checkpoint={tmp_path}/run/3", f"--out_dir={tmp_path}/hf", "--self_check", "--tolerance=1e-5"]
  out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  assert "self-check passed" in out.stdout and "peak RSS" in out.stdout
