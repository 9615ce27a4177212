"""Our param tree (dense or Mixture-of-Transformers) <-> a PyTorch directory in BAGEL's naming (safetensors + config).

Qwen2-style names for the text (understanding) expert; the image (generation) expert adds BAGEL's `_moe_gen` suffix
(`q_proj_moe_gen`, `mlp_moe_gen`, `norm_moe_gen`). Groups not in `model.mot_untied` export once, without a suffix.
Both directions go tensor by tensor with numpy and safetensors; `torch_mot.py` is the PyTorch model that reads it.
Import also reads q/k written for interleaved RoPE (config.json `rope_layout`, Meta's original layout; rope_layout.py).
"""
import os

import ml_collections

from unimodal_jax.convert import rope_layout, tensors
from unimodal_jax.convert.tensors import ConversionError, Tensor
from unimodal_jax.data import vocab as vocab_lib
from unimodal_jax.config import MOT_GROUPS
from unimodal_jax.model.checks import QK_NORMS

ARCHITECTURE = "UnimodalMoTForCausalLM"
EXPERT_SUFFIXES = ("", "_moe_gen")  # BAGEL: the understanding expert keeps Qwen2's names; generation adds _moe_gen
ROPE_LAYOUTS = ("rotate_half", "interleaved")  # ours and transformers'; Meta's original code
# Tensor kinds here: 'linear' (our [in..., out...] kernel <-> its [out, in] weight), 'transpose' (our [embed, vocab]
# head <-> its [vocab, embed] lm_head), 'reshape'.


def _group_tensors(m) -> dict:
  """Per weight group (MOT_GROUPS, plus 'shared'): (name template, our path, its shape, our shape, kind, stacked).
  `{x}` in a name is where the expert suffix goes."""
  e, h, kv, d, mlp, v = m.embed_dim, m.num_heads, m.num_kv_heads, m.head_dim, m.mlp_dim, m.vocab_size
  layer = "model.layers.{i}."
  shared = [("model.embed_tokens.weight", "embedding", (v, e), (v, e), "reshape", False)]
  if not m.tie_embeddings:
    shared.append(("lm_head.weight", "lm_head", (v, e), (e, v), "transpose", False))
  attention = [(f"{layer}self_attn.{p}_proj{{x}}.weight", f"layers/attn/{p}_kernel", (n * d, e), (e, n, d), "linear",
                True) for p, n in (("q", h), ("k", kv), ("v", kv))]
  attention.append((f"{layer}self_attn.o_proj{{x}}.weight", "layers/attn/o_kernel", (e, h * d), (h, d, e), "linear",
                    True))
  if m.qkv_bias:
    attention += [(f"{layer}self_attn.{p}_proj{{x}}.bias", f"layers/attn/{p}_bias", (n * d,), (n, d), "reshape", True)
                  for p, n in (("q", h), ("k", kv), ("v", kv))]
  qk_norm = []
  if m.qk_norm != "none":
    params = (("weight", "scale"), ("bias", "bias")) if m.qk_norm == "layernorm" else (("weight", "scale"),)
    qk_norm = [(f"{layer}self_attn.{p}_norm{{x}}.{theirs}", f"layers/attn/{p}_norm/{ours}", (n, d), (n, d), "reshape",
                True) for p, n in (("q", h), ("k", kv)) for theirs, ours in params]
  return {
      "shared": shared,
      "attention": attention,
      "qk_norm": qk_norm,
      "mlp": [(f"{layer}mlp{{x}}.{p}_proj.weight", f"layers/mlp/{ours}", shape[::-1], shape, "linear", True)
              for p, ours, shape in (("gate", "wi_0", (e, mlp)), ("up", "wi_1", (e, mlp)), ("down", "wo", (mlp, e)))],
      "block_norms": [(f"{layer}input_layernorm{{x}}.weight", "layers/attn_norm/scale", (e,), (e,), "reshape", True),
                      (f"{layer}post_attention_layernorm{{x}}.weight", "layers/mlp_norm/scale", (e,), (e,), "reshape",
                       True)],
      "final_norm": [("model.norm{x}.weight", "final_norm/scale", (e,), (e,), "reshape", False)],
  }


def untied_groups(m) -> tuple:
  """The groups with one copy per expert, in MOT_GROUPS order (none for a dense model)."""
  return tuple(g for g in MOT_GROUPS if m.num_experts > 1 and g in m.mot_untied)


def tensor_plan(m) -> list[Tensor]:
  """Every PyTorch tensor of the model section `m`, grouped by our leaf (each stacked leaf is read once)."""
  untied, plan = untied_groups(m), []
  for group, entries in _group_tensors(m).items():
    expert_ids = range(m.num_experts) if group in untied else [None]
    for template, ours, shape, our_shape, kind, stacked in entries:
      for i in range(m.num_layers) if stacked else [None]:
        for x in expert_ids:
          name = template.replace("{i}", str(i)).replace("{x}", EXPERT_SUFFIXES[x or 0])
          plan.append(Tensor(name, ours, i, shape, our_shape, kind, expert=x))
  return plan


def _to_torch(x, t: Tensor):
  if t.kind == "linear":
    return x.reshape(t.shape[::-1]).T
  if t.kind == "transpose":
    return x.T
  return x.reshape(t.shape)


def _from_torch(w, t: Tensor):
  if t.kind == "linear":
    return w.T.reshape(t.our_shape)
  if t.kind == "transpose":
    return w.T
  return w.reshape(t.our_shape)


# ---------------------------------------------------------------- export


def torch_config(m, vocab: vocab_lib.Vocab) -> dict:
  """config.json: Qwen2's keys where they exist, BAGEL's `layer_module`, and what our model adds."""
  return {
      "architectures": [ARCHITECTURE], "model_type": "unimodal_mot", "dtype": "float32",
      "layer_module": "Qwen2MoTDecoderLayer" if m.num_experts > 1 else "Qwen2DecoderLayer",
      "vocab_size": m.vocab_size, "hidden_size": m.embed_dim, "intermediate_size": m.mlp_dim,
      "num_hidden_layers": m.num_layers, "num_attention_heads": m.num_heads, "num_key_value_heads": m.num_kv_heads,
      "head_dim": m.head_dim, "hidden_act": "silu", "rms_norm_eps": m.norm_eps, "rope_theta": float(m.rope_theta),
      "rope_layout": "rotate_half",
      "attention_bias": bool(m.qkv_bias), "qk_norm": m.qk_norm, "swin_norm": m.norm_order == "swin",
      "tie_word_embeddings": bool(m.tie_embeddings),
      "num_experts": m.num_experts, "mot_untied": list(untied_groups(m)),
      "expert_suffixes": list(EXPERT_SUFFIXES[:m.num_experts]),
      "expert_modalities": list(vocab_lib.MODALITIES[:m.num_experts]),  # expert i serves PackedBatch.modality == i
      "text_size": vocab.text_size, "num_image_codes": vocab.num_image_codes,
      "boi_token_id": vocab.boi_id, "eoi_token_id": vocab.eoi_id, "image_code_offset": vocab.image_code_offset}


def to_torch(params, model_config, vocab, out_dir, *, max_shard_bytes=2**31, progress=False) -> dict:
  """Write `params` (any nested Mapping, read leaf by leaf) as safetensors shards with an index and a config.json
  that `torch_mot.load(out_dir)` reads. Returns the config.json written."""
  m = model_config
  if m.vocab_size < vocab.size:
    raise ConversionError(f"model.vocab_size={m.vocab_size} is smaller than the vocabulary's {vocab.size} ids")
  plan = tensor_plan(m)
  tensors.check_params(params, plan, m.num_layers, m.num_experts)
  os.makedirs(out_dir, exist_ok=True)
  weight_map, total = tensors.write_shards(plan, tensors.arrays(params, plan, _to_torch), out_dir, max_shard_bytes,
                                           desc="to-torch", progress=progress)
  tensors.write_index(out_dir, weight_map, total)
  config = torch_config(m, vocab)
  tensors.write_json(os.path.join(out_dir, "config.json"), config)
  return config


# ---------------------------------------------------------------- import


def model_overrides(config: dict) -> dict:
  """Our `model` config values for a config.json written by `to_torch` (or by hand in its format)."""
  architectures = config.get("architectures")
  if architectures != [ARCHITECTURE]:
    raise ConversionError(f"config.json architectures={architectures}: expected [{ARCHITECTURE!r}]")
  missing = [k for k in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                         "num_key_value_heads", "head_dim", "rms_norm_eps", "rope_theta", "num_experts", "text_size",
                         "num_image_codes") if k not in config]
  if missing:
    raise ConversionError(f"config.json lacks {missing}")
  if config.get("hidden_act", "silu") != "silu":
    raise ConversionError(f"config.json hidden_act={config['hidden_act']!r}: only 'silu' converts exactly")
  qk_norm, untied = config.get("qk_norm", "none"), tuple(config.get("mot_untied", ()))
  if qk_norm not in QK_NORMS:
    raise ConversionError(f"config.json qk_norm={qk_norm!r}: expected one of {QK_NORMS}")
  if config.get("rope_layout", "rotate_half") not in ROPE_LAYOUTS:
    raise ConversionError(f"config.json rope_layout={config['rope_layout']!r}: expected one of {ROPE_LAYOUTS}")
  unknown = set(untied) - set(MOT_GROUPS)
  if unknown or config["num_experts"] not in (1, len(EXPERT_SUFFIXES)):
    raise ConversionError(f"config.json num_experts={config['num_experts']}, mot_untied={list(untied)}: expected 1 "
                          f"or {len(EXPERT_SUFFIXES)} experts and groups among {MOT_GROUPS}")
  return {"vocab_size": config["vocab_size"], "num_layers": config["num_hidden_layers"],
          "embed_dim": config["hidden_size"], "num_heads": config["num_attention_heads"],
          "num_kv_heads": config["num_key_value_heads"], "head_dim": config["head_dim"],
          "mlp_dim": config["intermediate_size"], "qk_norm": qk_norm, "qkv_bias": bool(config.get("attention_bias")),
          "norm_order": "swin" if config.get("swin_norm") else "pre", "norm_eps": config["rms_norm_eps"],
          "rope_theta": float(config["rope_theta"]), "tie_embeddings": bool(config.get("tie_word_embeddings")),
          "num_experts": config["num_experts"],
          "mot_untied": untied if config["num_experts"] > 1 else MOT_GROUPS}


def _interleaved_to_half(w, t: Tensor, m):
  """The q/k rows and QK-norm entries of an interleaved-RoPE checkpoint, in our rotate-half order; others as given."""
  path = t.ours.removeprefix("layers/attn/")
  heads = {"q": m.num_heads, "k": m.num_kv_heads}.get(path[0]) if path != t.ours else None
  if heads and path[2:] in ("kernel", "bias"):
    return rope_layout.projection_to_half(w, heads)
  if heads and path[2:] in ("norm/scale", "norm/bias"):
    return rope_layout.qk_norm_to_half(w, heads)
  return w


def from_torch(torch_dir, *, progress=False):
  """Read a directory written by `to_torch` into (our params, `model` config overrides, Vocab).

  Params are nested dicts of float32 numpy arrays, in the layout our model with those overrides initialises. With
  `"rope_layout": "interleaved"` in config.json, q/k projections and QK-norm parameters are permuted to rotate-half.
  """
  config = tensors.read_config(torch_dir)
  overrides = model_overrides(config)
  vocab = vocab_lib.Vocab(text_size=config["text_size"], num_image_codes=config["num_image_codes"])
  m = ml_collections.ConfigDict(overrides)
  plan = tensor_plan(m)
  files = tensors.tensor_files(torch_dir)
  unexpected = sorted(set(files) - {t.name for t in plan})
  if unexpected:
    raise ConversionError(f"{torch_dir}: tensors our model has no place for: {unexpected[:5]}")
  interleaved = config.get("rope_layout") == "interleaved"

  def from_theirs(w, t):
    return _from_torch(_interleaved_to_half(w, t, m) if interleaved else w, t)

  params = tensors.fill(plan, files, torch_dir, from_theirs, m.num_layers, m.num_experts, desc="from-torch",
                        progress=progress)
  return params, overrides, vocab
