"""Our dense param tree <-> a transformers `ChameleonForConditionalGeneration` directory (config.json, safetensors).

Both directions go tensor by tensor; export needs numpy and safetensors, never torch. No orbax and no MoT here.
"""
import os
import warnings

import ml_collections

from unimodal_jax.convert import hf_vq, tensors, vocab_map
from unimodal_jax.convert.tensors import ConversionError, Tensor

ARCHITECTURE = "ChameleonForConditionalGeneration"
QK_NORM_EPS = 1e-5  # transformers' ChameleonLayerNorm hard-codes it; its rms_norm_eps only reaches the RMSNorms
MAX_POSITIONS = 4096  # Chameleon's; default RoPE does not read it, generation does
HF_DEFAULTS = {  # ChameleonConfig's defaults, for keys a config.json leaves out
    "vocab_size": 65536, "hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32,
    "num_attention_heads": 32, "num_key_value_heads": 32, "hidden_act": "silu", "rms_norm_eps": 1e-5,
    "attention_bias": False, "mlp_bias": False, "swin_norm": False, "tie_word_embeddings": False}


# Tensor kinds here: 'linear' (our [in..., out...] kernel <-> its [out, in] weight), 'reshape', 'rows' (vocabulary
# rows, permuted), 'rows_linear' (our [embed, vocab] head <-> its [vocab, embed] rows), 'zeros' (its o_proj bias, which
# our model does not have: `ours` is None).


def tensor_plan(m) -> list[Tensor]:
  """Every transformers tensor of the model section `m`, grouped by our leaf (each stacked leaf is read once)."""
  e, h, kv, d, mlp, v = m.embed_dim, m.num_heads, m.num_kv_heads, m.head_dim, m.mlp_dim, m.vocab_size
  plan = [Tensor("model.embed_tokens.weight", "embedding", None, (v, e), (v, e), "rows")]
  if not m.tie_embeddings:
    plan.append(Tensor("lm_head.weight", "lm_head", None, (v, e), (e, v), "rows_linear"))
  plan.append(Tensor("model.norm.weight", "final_norm/scale", None, (e,), (e,), "reshape"))
  per_layer = [  # (transformers suffix, our path under layers/, its shape, our shape, kind)
      ("input_layernorm.weight", "attn_norm/scale", (e,), (e,), "reshape"),
      ("post_attention_layernorm.weight", "mlp_norm/scale", (e,), (e,), "reshape"),
      ("self_attn.q_proj.weight", "attn/q_kernel", (h * d, e), (e, h, d), "linear"),
      ("self_attn.k_proj.weight", "attn/k_kernel", (kv * d, e), (e, kv, d), "linear"),
      ("self_attn.v_proj.weight", "attn/v_kernel", (kv * d, e), (e, kv, d), "linear"),
      ("self_attn.o_proj.weight", "attn/o_kernel", (e, h * d), (h, d, e), "linear"),
      ("self_attn.q_norm.weight", "attn/q_norm/scale", (h, d), (h, d), "reshape"),
      ("self_attn.q_norm.bias", "attn/q_norm/bias", (h, d), (h, d), "reshape"),
      ("self_attn.k_norm.weight", "attn/k_norm/scale", (kv, d), (kv, d), "reshape"),
      ("self_attn.k_norm.bias", "attn/k_norm/bias", (kv, d), (kv, d), "reshape"),
      ("mlp.gate_proj.weight", "mlp/wi_0", (mlp, e), (e, mlp), "linear"),
      ("mlp.up_proj.weight", "mlp/wi_1", (mlp, e), (e, mlp), "linear"),
      ("mlp.down_proj.weight", "mlp/wo", (e, mlp), (mlp, e), "linear"),
  ]
  if m.qkv_bias:  # transformers' attention_bias also gives o_proj a bias
    per_layer += [("self_attn.q_proj.bias", "attn/q_bias", (h * d,), (h, d), "reshape"),
                  ("self_attn.k_proj.bias", "attn/k_bias", (kv * d,), (kv, d), "reshape"),
                  ("self_attn.v_proj.bias", "attn/v_bias", (kv * d,), (kv, d), "reshape"),
                  ("self_attn.o_proj.bias", None, (e,), (e,), "zeros")]
  plan += [Tensor(f"model.layers.{layer}.{suffix}", ours and f"layers/{ours}", layer, shape, our_shape, kind)
           for suffix, ours, shape, our_shape, kind in per_layer for layer in range(m.num_layers)]
  return plan


def _to_hf(x, t: Tensor, hf_id_of):
  if t.kind == "linear":
    return x.reshape(t.shape[::-1]).T
  if t.kind == "rows":
    return vocab_map.rows_to_hf(x, hf_id_of)
  if t.kind == "rows_linear":
    return vocab_map.rows_to_hf(x.T, hf_id_of)
  return x.reshape(t.shape)


def _from_hf(w, t: Tensor, hf_id_of):
  if t.kind == "linear":
    return w.T.reshape(t.our_shape)
  if t.kind == "rows":
    return vocab_map.rows_from_hf(w, hf_id_of)
  if t.kind == "rows_linear":
    return vocab_map.rows_from_hf(w, hf_id_of).T
  return w.reshape(t.our_shape)


# ---------------------------------------------------------------- export


def check_exportable(m):
  """Raise ConversionError, naming the config key, for a model transformers' Chameleon cannot reproduce."""
  if m.num_experts != 1:
    raise ConversionError(f"model.num_experts={m.num_experts}: transformers' Chameleon is dense; a "
                          "Mixture-of-Transformers exports to the per-expert PyTorch layout instead")
  if m.qk_norm != "layernorm":
    raise ConversionError(f"model.qk_norm={m.qk_norm!r}: transformers' Chameleon always applies a LayerNorm "
                          "QK-norm, so only 'layernorm' converts exactly")
  if m.norm_eps != QK_NORM_EPS:
    raise ConversionError(f"model.norm_eps={m.norm_eps}: transformers' Chameleon QK-norm uses eps {QK_NORM_EPS}")
  if m.num_heads * m.head_dim != m.embed_dim:
    raise ConversionError(f"model.head_dim={m.head_dim}: transformers' Chameleon needs num_heads * head_dim == "
                          f"embed_dim ({m.num_heads} * {m.head_dim} != {m.embed_dim})")


def hf_config(m, layout: vocab_map.Layout, vq_config: dict) -> dict:
  """The config.json transformers' ChameleonConfig reads for the model section `m`."""
  return {
      "architectures": [ARCHITECTURE], "model_type": "chameleon", "dtype": "float32",
      "vocab_size": m.vocab_size, "hidden_size": m.embed_dim, "intermediate_size": m.mlp_dim,
      "num_hidden_layers": m.num_layers, "num_attention_heads": m.num_heads, "num_key_value_heads": m.num_kv_heads,
      "hidden_act": "silu", "mlp_bias": False, "rms_norm_eps": m.norm_eps, "attention_bias": bool(m.qkv_bias),
      "rope_parameters": {"rope_type": "default", "rope_theta": float(m.rope_theta)},
      "swin_norm": m.norm_order == "swin", "tie_word_embeddings": bool(m.tie_embeddings),
      "max_position_embeddings": MAX_POSITIONS, "pad_token_id": layout.pad_token_id,
      "bos_token_id": layout.bos_token_id, "eos_token_id": layout.eos_token_id,
      "vocabulary_map": layout.vocabulary_map, "vq_config": vq_config}


def to_hf(params, model_config, vocab, out_dir, *, text_token_names=None, layout=None, vq_config=None,
          vq_tokenizer_dir=None, max_shard_bytes=2**31, progress=False) -> dict:
  """Write `params` (our dense tree; any nested Mapping, read leaf by leaf) as a directory that
  `ChameleonForConditionalGeneration.from_pretrained(out_dir)` loads. Returns the config.json written.

  Token layout: `layout` (e.g. that of an imported checkpoint, to export back into its ids), else our ids as
  transformers' ids, text ids named by `text_token_names` (our BPE's tokens). With `vq_tokenizer_dir` (our VQGAN
  tokenizer directory) its encoder, quantizer and quant convs become `model.vqmodel.*` tensors, `vq_config` is
  derived from it, and its decoder is written beside (hf_vq.py). Without it `vq_config` defaults to
  ChameleonVQVAEConfig's defaults with our codebook size and no VQ weights are written.
  """
  m = model_config
  check_exportable(m)
  if vq_tokenizer_dir and vq_config:
    raise ConversionError("give vq_config or vq_tokenizer_dir, not both: the tokenizer's config is its vq_config")
  tokenizer = hf_vq.read_tokenizer(vq_tokenizer_dir, vocab) if vq_tokenizer_dir else None
  layout = layout or vocab_map.synthetic_layout(vocab, m.vocab_size, text_token_names)
  hf_id_of, layout_vocab = vocab_map.permutation(layout)
  if layout.vocab_size != m.vocab_size or layout_vocab != vocab:
    raise ConversionError(f"the token layout has {layout.vocab_size} rows and {layout_vocab}; the model has "
                          f"model.vocab_size={m.vocab_size} and {vocab}")
  plan = tensor_plan(m)
  tensors.check_params(params, plan, m.num_layers)
  os.makedirs(out_dir, exist_ok=True)
  weight_map, total = tensors.write_shards(plan, tensors.arrays(params, plan, lambda x, t: _to_hf(x, t, hf_id_of)),
                                           out_dir, max_shard_bytes, desc="to-hf", progress=progress)
  if tokenizer:
    vq_config, vq_weight_map, vq_bytes = hf_vq.write_tokenizer(*tokenizer, out_dir)
    weight_map.update(vq_weight_map)
    total += vq_bytes
  tensors.write_index(out_dir, weight_map, total)
  config = hf_config(m, layout, vq_config or {"num_embeddings": vocab.num_image_codes})
  tensors.write_json(os.path.join(out_dir, "config.json"), config)
  return config


# ---------------------------------------------------------------- import


def _rope_theta(config) -> float:
  rope = config.get("rope_parameters") or config.get("rope_scaling") or {}  # rope_scaling: transformers < 5
  kind = rope.get("rope_type", rope.get("type", "default"))
  if kind != "default":
    raise ConversionError(f"config.json rope_parameters.rope_type={kind!r}: only 'default' RoPE converts")
  return float(rope.get("rope_theta", config.get("rope_theta", 10000.0)))


def model_overrides(config: dict) -> dict:
  """Our `model` config values for a transformers Chameleon config.json (as a dict)."""
  architectures = config.get("architectures")
  if architectures != [ARCHITECTURE]:
    raise ConversionError(f"config.json architectures={architectures}: expected [{ARCHITECTURE!r}]")
  c = {**HF_DEFAULTS, **{k: config[k] for k in HF_DEFAULTS if k in config}}
  for key, supported in (("hidden_act", "silu"), ("mlp_bias", False), ("rms_norm_eps", QK_NORM_EPS)):
    if c[key] != supported:
      raise ConversionError(f"config.json {key}={c[key]!r}: only {supported!r} converts exactly")
  heads, embed = c["num_attention_heads"], c["hidden_size"]
  kv_heads = c["num_key_value_heads"] or heads  # null: one kv head per head
  if embed % heads or heads % kv_heads:
    raise ConversionError(f"config.json hidden_size={embed}, num_attention_heads={heads}, num_key_value_heads="
                          f"{kv_heads}: heads must divide hidden_size and kv heads must divide heads")
  return {"vocab_size": c["vocab_size"], "num_layers": c["num_hidden_layers"], "embed_dim": embed,
          "num_heads": heads, "num_kv_heads": kv_heads, "head_dim": embed // heads,
          "mlp_dim": c["intermediate_size"], "qk_norm": "layernorm", "qkv_bias": bool(c["attention_bias"]),
          "norm_order": "swin" if c["swin_norm"] else "pre", "norm_eps": c["rms_norm_eps"],
          "rope_theta": _rope_theta(config), "tie_embeddings": bool(c["tie_word_embeddings"]), "num_experts": 1}


def from_hf(hf_dir, *, vq_out=None, progress=False):
  """Read a transformers Chameleon directory into (our params, `model` config overrides, Vocab).

  Params are nested dicts of float32 numpy arrays; rows follow our Vocab (text, <boi>, <eoi>, codes, padding).
  With `vq_out`, the VQ tokenizer (`model.vqmodel.*`, and our decoder file when present) is written there as our
  tokenizer directory (hf_vq.import_tokenizer); a directory without the decoder file gives an encoder-only
  tokenizer (decoder weights zero) and a warning. Without `vq_out` the VQ tensors are not read.
  """
  config = tensors.read_config(hf_dir)
  overrides = model_overrides(config)
  hf_id_of, vocab = vocab_map.permutation(vocab_map.layout_from_config(config))
  m = ml_collections.ConfigDict(overrides)
  plan = tensor_plan(m)
  files = tensors.tensor_files(hf_dir)
  planned = {t.name for t in plan} | ({"lm_head.weight"} if m.tie_embeddings else set())
  unexpected = sorted(n for n in files if n not in planned and not n.startswith(hf_vq.VQ_PREFIX))
  if unexpected:
    raise ConversionError(f"{hf_dir}: tensors our model has no place for: {unexpected[:5]}")
  params = tensors.fill(plan, files, hf_dir, lambda w, t: _from_hf(w, t, hf_id_of), m.num_layers, desc="from-hf",
                        progress=progress)
  if vq_out:
    if not hf_vq.import_tokenizer(hf_dir, vq_out, vocab):
      warnings.warn(f"{hf_dir} has no {hf_vq.DECODER_FILE}: the tokenizer in {vq_out} encodes images, but its "
                    "decoder weights are zeros (transformers' checkpoints hold no decoder)")
  return params, overrides, vocab
