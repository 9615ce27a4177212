"""Conversion of our Mixture-of-Transformers to and from the PyTorch layout in BAGEL's naming, checked against the
PyTorch reference (convert/torch_mot.py) on packed rows: several documents, interleaved text and image tokens,
padding. Everything runs in float32; parity means max |ours - reference| / max |reference| < 1e-5.
"""
import functools
import json
import os
import shlex
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from safetensors.numpy import load_file, save_file

import batches
from test_convert_hf import random_params  # every leaf random: each MoT expert gets its own
from unimodal_jax import config as config_lib
from unimodal_jax.convert import checkpoint, mot, rope_layout, tensors
from unimodal_jax.convert.hf_chameleon import ConversionError
from unimodal_jax.data.vocab import from_config
from unimodal_jax.model.transformer import Transformer, batch_inputs
from unimodal_jax.train import checkpoint as train_checkpoint

torch = pytest.importorskip("torch", reason="the torch extra is not installed")
from unimodal_jax.convert import torch_mot  # noqa: E402  (needs torch)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEQ_LEN = 96
IMAGE_LEN = 18  # <boi> + 16 codes + <eoi>
CASES = {  # on configs/mot_tiny.py (MHA 4 heads, LayerNorm QK-norm, pre-norm, untied head)
    "all_untied_gqa": {"num_kv_heads": 2},
    "bagel_like_attention_and_mlp_untied": {"num_kv_heads": 2, "qk_norm": "rmsnorm", "qkv_bias": True,
                                            "norm_eps": 1e-6, "rope_theta": 1e6, "mot_untied": ("attention", "mlp")},
    "swin_tied_mqa_norms_untied": {"num_kv_heads": 1, "norm_order": "swin", "tie_embeddings": True,
                                   "qk_norm": "none", "mot_untied": ("block_norms", "final_norm")},
}


def load_config(name="mot_tiny"):
  return config_lib.load_config_file(os.path.join(REPO, "configs", f"{name}.py"))


def model_config(case):
  m = load_config().model
  m.update(CASES[case])
  return m


def packed_batch(vocab, seed=0):
  """Two rows of three documents each, with images, and padding; both modalities present."""
  batch = batches.random_batch(np.random.default_rng(seed), vocab, 2, SEQ_LEN, IMAGE_LEN)
  assert batch.modality.sum() > 0 and (batch.segment_ids.max(axis=1) > 1).all()
  return batch


@functools.cache
def jitted_apply(case):  # one compile per case, shared by the tests that use it
  return jax.jit(Transformer(model_config(case)).apply)


def our_logits(params, case, batch):
  return np.asarray(jitted_apply(case)({"params": params}, **batch_inputs(batch)))


def reference_logits(torch_dir, batch, modality=None):
  inputs = [batch.tokens, batch.modality if modality is None else modality, batch.segment_ids, batch.positions]
  with torch.no_grad():
    return torch_mot.load(torch_dir)(*(torch.from_numpy(np.asarray(x, np.int64)) for x in inputs)).numpy()


def relative_error(ours, theirs):
  return np.abs(ours - theirs).max() / np.abs(theirs).max()


@pytest.mark.parametrize("case", CASES)
def test_exported_mot_matches_the_pytorch_reference_logits(tmp_path, case):
  m = model_config(case)
  vocab = from_config(load_config())
  params = random_params(m)
  mot.to_torch(params, m, vocab, str(tmp_path))
  batch = packed_batch(vocab)
  theirs = reference_logits(str(tmp_path), batch)
  assert relative_error(our_logits(params, case, batch), theirs) < 1e-5
  # The comparison covers routing: all tokens through the text expert gives other logits.
  assert relative_error(reference_logits(str(tmp_path), batch, np.zeros_like(batch.modality)), theirs) > 1e-2


def test_tensor_names_follow_bagel(tmp_path):
  """Qwen2 names for the text expert, `_moe_gen` for the image expert; a tied group is written once, unsuffixed."""
  m = model_config("bagel_like_attention_and_mlp_untied")
  mot.to_torch(random_params(m), m, from_config(load_config()), str(tmp_path))
  with open(tmp_path / "model.safetensors.index.json") as f:
    names = set(json.load(f)["weight_map"])
  layer0 = {n.removeprefix("model.layers.0.") for n in names if n.startswith("model.layers.0.")}
  attention = {f"self_attn.{p}_proj{x}.{w}" for p in "qkvo" for x in ("", "_moe_gen") for w in ("weight", "bias")}
  attention -= {"self_attn.o_proj.bias", "self_attn.o_proj_moe_gen.bias"}  # BAGEL's o_proj has no bias
  mlp = {f"mlp{x}.{p}_proj.weight" for x in ("", "_moe_gen") for p in ("gate", "up", "down")}
  shared = {"self_attn.q_norm.weight", "self_attn.k_norm.weight", "input_layernorm.weight",
            "post_attention_layernorm.weight"}
  assert layer0 == attention | mlp | shared
  assert names - {n for n in names if n.startswith("model.layers.")} == {
      "model.embed_tokens.weight", "lm_head.weight", "model.norm.weight"}
  config = tensors.read_config(str(tmp_path))
  assert config["expert_suffixes"] == ["", "_moe_gen"] and config["mot_untied"] == ["attention", "mlp"]


@pytest.mark.parametrize("case", ["all_untied_gqa", "swin_tied_mqa_norms_untied"])
def test_jax_torch_jax_round_trip_is_bit_exact_and_restores_into_a_run(tmp_path, case):
  m = model_config(case)
  vocab = from_config(load_config())
  params = random_params(m, seed=1)
  mot.to_torch(params, m, vocab, str(tmp_path / "pt"), max_shard_bytes=50_000)
  assert len([f for f in os.listdir(tmp_path / "pt") if f.endswith(".safetensors")]) > 1  # sharded, with an index
  back, overrides, back_vocab = mot.from_torch(str(tmp_path / "pt"))
  assert back_vocab == vocab
  assert {k: m[k] for k in overrides} == overrides
  assert jax.tree.structure(back) == jax.tree.structure(params)
  for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(params)[0], jax.tree.leaves(back)):
    assert a.dtype == b.dtype and np.array_equal(a, b), jax.tree_util.keystr(path)
  # What train.init_from reads: the params item of a checkpoint step, restored into the MoT model's tree.
  checkpoint.write_params(back, str(tmp_path / "init"))
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device), params)
  restored = train_checkpoint.restore_params(str(tmp_path / "init"), abstract)
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(restored)):
    assert np.array_equal(a, np.asarray(b))


def rewrite_tensors(torch_dir, change):
  [path] = [os.path.join(torch_dir, f) for f in os.listdir(torch_dir) if f.endswith(".safetensors")]
  tensors = load_file(path)
  change(tensors)
  save_file(tensors, path, metadata={"format": "pt"})
  with open(os.path.join(torch_dir, "model.safetensors.index.json"), "w") as f:
    json.dump({"weight_map": dict.fromkeys(tensors, os.path.basename(path))}, f)


O_PROJ_BIAS = "model.layers.0.self_attn.o_proj_moe_gen.bias"  # BAGEL's o_proj has no bias, nor has ours
BAD_CHECKPOINTS = {
    "missing tensor": (lambda t: t.pop("model.layers.1.mlp_moe_gen.up_proj.weight"),
                       "model.layers.1.mlp_moe_gen.up_proj.weight"),
    "wrong shape": (lambda t: t.update({"model.layers.0.self_attn.k_proj_moe_gen.weight":
                                        t["model.layers.0.self_attn.k_proj_moe_gen.weight"].T}),
                    "model.layers.0.self_attn.k_proj_moe_gen.weight"),
    "unexpected tensor": (lambda t: t.update({O_PROJ_BIAS: np.zeros(64, np.float32)}), O_PROJ_BIAS),
}


@pytest.mark.parametrize("case", BAD_CHECKPOINTS)
def test_bad_checkpoint_is_refused_naming_the_tensor(tmp_path, case):
  m = model_config("all_untied_gqa")
  mot.to_torch(random_params(m), m, from_config(load_config()), str(tmp_path))
  change, tensor_name = BAD_CHECKPOINTS[case]
  rewrite_tensors(str(tmp_path), change)
  with pytest.raises(ConversionError, match=tensor_name.replace(".", r"\.")):
    mot.from_torch(str(tmp_path))
  with pytest.raises(RuntimeError, match=tensor_name.replace(".", r"\.")):  # torch's load_state_dict names it too
    torch_mot.load(str(tmp_path))


def test_unknown_architecture_is_refused_naming_the_key(tmp_path):
  m = model_config("all_untied_gqa")
  mot.to_torch(random_params(m), m, from_config(load_config()), str(tmp_path))
  config = tensors.read_config(str(tmp_path))
  config["architectures"] = ["Qwen2ForCausalLM"]
  (tmp_path / "config.json").write_text(json.dumps(config))
  with pytest.raises(ConversionError, match="architectures.*Qwen2ForCausalLM"):
    mot.from_torch(str(tmp_path))
  with pytest.raises(ValueError, match="architectures.*Qwen2ForCausalLM"):
    torch_mot.load(str(tmp_path))


def save_interleaved_torch_model(path, m, vocab):
  """A PyTorch-initialised random MoT whose q/k follow Meta's interleaved RoPE, with QK-norm parameters as Meta's
  original Chameleon holds them (one head_dim vector shared by the heads) and random norm weights."""
  config = {**mot.torch_config(m, vocab), "rope_layout": "interleaved"}
  torch.manual_seed(0)
  model = torch_mot.MoTForCausalLM(config)
  with torch.no_grad():
    for name, p in model.named_parameters():
      if "_norm" in name:  # q_norm, k_norm: one vector repeated over heads
        p.copy_((1.0 if name.endswith("weight") else 0.0) + 0.1 * torch.randn(p.shape[-1]).expand_as(p))
      elif "norm" in name:
        p.copy_(1.0 + 0.1 * torch.randn_like(p))
  os.makedirs(path, exist_ok=True)
  save_file({k: v.numpy() for k, v in model.state_dict().items()}, os.path.join(path, "model.safetensors"))
  with open(os.path.join(path, "config.json"), "w") as f:
    json.dump(config, f)


def test_interleaved_rope_checkpoint_imports_to_the_same_logits(tmp_path):
  """Reference: torch_mot with Meta's complex-number RoPE on adjacent pairs; ours: rotate-half on permuted q/k."""
  case = "all_untied_gqa"
  m, vocab = model_config(case), from_config(load_config())
  save_interleaved_torch_model(str(tmp_path), m, vocab)
  params, overrides, _ = mot.from_torch(str(tmp_path))
  assert {k: m[k] for k in overrides} == overrides
  batch = packed_batch(vocab, seed=2)
  theirs = reference_logits(str(tmp_path), batch)
  assert relative_error(our_logits(params, case, batch), theirs) < 1e-5
  config = tensors.read_config(str(tmp_path))
  (tmp_path / "config.json").write_text(json.dumps({**config, "rope_layout": "rotate_half"}))
  unpermuted, _, _ = mot.from_torch(str(tmp_path))  # without the permutation the logits differ
  assert relative_error(our_logits(unpermuted, case, batch), theirs) > 1e-2


def test_meta_qk_norm_vectors_spread_over_heads_and_shards():
  """Meta's Chameleon-7B: one [head_dim] vector; 34B: one per model-parallel shard, for that shard's heads."""
  vector = np.arange(8.0)
  assert rope_layout.qk_norm_to_half(vector, 3).tolist() == [[0, 2, 4, 6, 1, 3, 5, 7]] * 3
  shards = np.stack([vector, vector + 10])
  assert rope_layout.qk_norm_to_half(shards, 4)[:, 0].tolist() == [0, 0, 10, 10]
  w = np.arange(2 * 4 * 3).reshape(8, 3)  # 2 heads of head_dim 4, 3 inputs
  assert rope_layout.projection_to_half(w, 2)[:4, 0].tolist() == [0, 6, 3, 9]


def test_cli_exports_with_a_self_check_and_imports_a_mot_checkpoint(tmp_path):
  c = load_config()
  params = random_params(c.model)
  with ocp.StandardCheckpointer() as saver:
    saver.save(str(tmp_path / "run" / "3" / "state"), {"step": 3, "params": params})
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  cli = [sys.executable, "-m", "unimodal_jax.cli.convert"]
  out = subprocess.run(cli + ["to-torch", f"--config={REPO}/configs/mot_tiny.py", f"--checkpoint={tmp_path}/run/3",
                              f"--out_dir={tmp_path}/pt", "--self_check", "--tolerance=1e-5"],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  assert "self-check passed" in out.stdout and "peak RSS" in out.stdout
  # from-torch's self-check is the same comparison (parity.max_relative_error_torch); its import is checked bit-exact.
  out = subprocess.run(cli + ["from-torch", f"--torch_dir={tmp_path}/pt", f"--out_dir={tmp_path}/init",
                              f"--config={REPO}/configs/mot_tiny.py"],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  assert "fits --config as given" in out.stdout
  out = subprocess.run(cli + ["from-torch", f"--torch_dir={tmp_path}/pt", f"--out_dir={tmp_path}/init2",
                              f"--config={REPO}/configs/tiny.py"],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  lines = out.stdout.splitlines()
  pasted = shlex.split(lines[lines.index("The model fits --config with these flags:") + 1])
  assert pasted and all(f.startswith("--config.") and not f.endswith(".") for f in pasted), pasted
  assert "--config.model.num_experts=2" in pasted
  restored = checkpoint.load_all(checkpoint.read_params(str(tmp_path / "init")))
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(restored)):
    assert np.array_equal(a, b)
