"""The early-fusion decoder (DESIGN section 5): one transformer over the interleaved token stream.

Flax linen; every parameter carries logical axis names (never mesh axes). Attention is causal
within a packed document and blind across documents (segment ids). Training logic lives elsewhere.
"""
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from unimodal_jax.data.batch import PackedBatch
from unimodal_jax.model import attention

Dtype = Any

REMAT_POLICIES = {
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_with_no_batch_dims": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def _param(module, name, init, shape, axes):
  return module.param(name, nn.with_logical_partitioning(init, axes), shape, jnp.float32)


def _dense_init(fan_in):
  return nn.initializers.normal(stddev=fan_in**-0.5)


def apply_rope(x, positions, theta):
  """Rotary embedding, rotate-half convention (transformers). x: [b, s, h, d]; positions: [b, s]."""
  half = x.shape[-1] // 2
  freq = theta ** (-jnp.arange(half, dtype=jnp.float32) / half)
  angle = positions[..., None].astype(jnp.float32) * freq  # [b, s, half]
  cos, sin = jnp.cos(angle)[:, :, None, :], jnp.sin(angle)[:, :, None, :]
  x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
  return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1).astype(x.dtype)


class RMSNorm(nn.Module):
  eps: float
  dtype: Dtype
  axis_name: str = "embed"

  @nn.compact
  def __call__(self, x):
    scale = _param(self, "scale", nn.initializers.ones, (x.shape[-1],), (self.axis_name,))
    x32 = x.astype(jnp.float32)
    y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
    return (y * scale).astype(self.dtype)


class HeadNorm(nn.Module):
  """QK-norm over head_dim with per-head parameters of shape (heads, head_dim).

  'layernorm': weight and bias (Chameleon); 'rmsnorm': weight only (Qwen2/BAGEL).
  """

  kind: str
  eps: float
  heads_axis: str

  @nn.compact
  def __call__(self, x):  # [b, s, h, d]
    shape, axes = x.shape[-2:], (self.heads_axis, "head_dim")
    x32 = x.astype(jnp.float32)
    if self.kind == "layernorm":
      x32 = x32 - jnp.mean(x32, axis=-1, keepdims=True)
    y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
    y = y * _param(self, "scale", nn.initializers.ones, shape, axes)
    if self.kind == "layernorm":
      y = y + _param(self, "bias", nn.initializers.zeros, shape, axes)
    return y.astype(x.dtype)


class Attention(nn.Module):
  config: Any

  def _project(self, x, name, heads, heads_axis):
    c = self.config
    kernel = _param(self, f"{name}_kernel", _dense_init(c.embed_dim), (c.embed_dim, heads, c.head_dim),
                    ("embed", heads_axis, "head_dim"))
    y = jnp.einsum("bse,ehd->bshd", x, kernel.astype(x.dtype))
    if c.qkv_bias:
      y = y + _param(self, f"{name}_bias", nn.initializers.zeros, (heads, c.head_dim),
                     (heads_axis, "head_dim")).astype(x.dtype)
    return y

  @nn.compact
  def __call__(self, x, segment_ids, positions):
    c = self.config
    q = self._project(x, "q", c.num_heads, "heads")
    k = self._project(x, "k", c.num_kv_heads, "kv_heads")
    v = self._project(x, "v", c.num_kv_heads, "kv_heads")
    if c.qk_norm != "none":
      q = HeadNorm(c.qk_norm, c.norm_eps, "heads", name="q_norm")(q)
      k = HeadNorm(c.qk_norm, c.norm_eps, "kv_heads", name="k_norm")(k)
    q = apply_rope(q, positions, c.rope_theta)
    k = apply_rope(k, positions, c.rope_theta)
    q = nn.with_logical_constraint(q, ("activation_batch", "activation_length", "activation_heads", None))
    k = nn.with_logical_constraint(k, ("activation_batch", "activation_length", "activation_kv_heads", None))
    v = nn.with_logical_constraint(v, ("activation_batch", "activation_length", "activation_kv_heads", None))
    out = attention.attend(q, k, v, segment_ids, c.attention)
    kernel = _param(self, "o_kernel", _dense_init(c.num_heads * c.head_dim), (c.num_heads, c.head_dim, c.embed_dim),
                    ("heads", "head_dim", "embed"))
    return jnp.einsum("bshd,hde->bse", out, kernel.astype(out.dtype))


class MLP(nn.Module):
  """SwiGLU: wo(silu(x wi_0) * x wi_1)."""

  config: Any

  @nn.compact
  def __call__(self, x):
    c = self.config
    wi_0 = _param(self, "wi_0", _dense_init(c.embed_dim), (c.embed_dim, c.mlp_dim), ("embed", "mlp"))
    wi_1 = _param(self, "wi_1", _dense_init(c.embed_dim), (c.embed_dim, c.mlp_dim), ("embed", "mlp"))
    wo = _param(self, "wo", _dense_init(c.mlp_dim), (c.mlp_dim, c.embed_dim), ("mlp", "embed"))
    h = nn.silu(x @ wi_0.astype(x.dtype)) * (x @ wi_1.astype(x.dtype))
    h = nn.with_logical_constraint(h, ("activation_batch", "activation_length", "activation_mlp"))
    return h @ wo.astype(x.dtype)


class Block(nn.Module):
  """One decoder layer. 'pre': h = x + attn(norm(x)); 'swin': h = x + norm(attn(x)) (Chameleon-34B)."""

  config: Any
  deterministic: bool

  @nn.compact
  def __call__(self, x, segment_ids, positions):
    c = self.config
    dtype = jnp.dtype(c.dtype)
    drop = nn.Dropout(c.dropout_rate, deterministic=self.deterministic)
    attn_norm = RMSNorm(c.norm_eps, dtype, name="attn_norm")
    mlp_norm = RMSNorm(c.norm_eps, dtype, name="mlp_norm")
    attn, mlp = Attention(c, name="attn"), MLP(c, name="mlp")
    if c.norm_order == "pre":
      h = x + drop(attn(attn_norm(x), segment_ids, positions))
      out = h + drop(mlp(mlp_norm(h)))
    else:
      h = x + drop(attn_norm(attn(x, segment_ids, positions)))
      out = h + drop(mlp_norm(mlp(h)))
    out = nn.with_logical_constraint(out, ("activation_batch", "activation_length", "activation_embed"))
    return out, None


class Transformer(nn.Module):
  """Decoder-only LM over the unified vocabulary. Returns float32 logits [b, s, vocab_size]."""

  config: Any  # the `model` section of the run config

  @nn.compact
  def __call__(self, batch: PackedBatch, deterministic: bool = True):
    c = self.config
    dtype = jnp.dtype(c.dtype)
    embedding = _param(self, "embedding", nn.initializers.normal(0.02), (c.vocab_size, c.embed_dim), ("vocab", "embed"))
    # Gather from a table whose embed dim is whole (not FSDP-sharded), so rows land batch-sharded.
    table = nn.with_logical_constraint(embedding, ("activation_vocab", "activation_embed"))
    x = jnp.take(table, batch.tokens, axis=0).astype(dtype)
    x = nn.with_logical_constraint(x, ("activation_batch", "activation_length", "activation_embed"))

    block = Block
    if c.remat_policy != "none":
      block = nn.remat(Block, policy=REMAT_POLICIES[c.remat_policy], prevent_cse=False)
    layers = nn.scan(block, variable_axes={"params": 0}, split_rngs={"params": True, "dropout": True},
                     in_axes=(nn.broadcast, nn.broadcast), length=c.num_layers,
                     metadata_params={nn.PARTITION_NAME: "layers"})
    x, _ = layers(c, deterministic, name="layers")(x, batch.segment_ids, batch.positions)
    x = RMSNorm(c.norm_eps, dtype, name="final_norm")(x)

    if c.tie_embeddings:
      head = embedding.T
    else:
      head = _param(self, "lm_head", _dense_init(c.embed_dim), (c.embed_dim, c.vocab_size), ("embed", "vocab"))
    logits = jnp.einsum("bse,ev->bsv", x, head.astype(dtype), preferred_element_type=jnp.float32)
    return nn.with_logical_constraint(logits, ("activation_batch", "activation_length", "activation_vocab"))
