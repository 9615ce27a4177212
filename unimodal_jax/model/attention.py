"""Attention implementations over packed rows: causal within a document (segment), blind across documents.

`attend` dispatches on `config.model.attention`; `dot_product_attention` (XLA) is the reference and the
oracle every other implementation is tested against.
"""
import jax
import jax.numpy as jnp

IMPLEMENTATIONS = ("xla",)


def attention_mask(segment_ids):
  """[b, 1, s, s] boolean: token i sees token j iff same segment and j <= i."""
  s = segment_ids.shape[-1]
  causal = jnp.arange(s)[:, None] >= jnp.arange(s)[None, :]
  same = segment_ids[:, :, None] == segment_ids[:, None, :]
  return (causal[None] & same)[:, None]


def dot_product_attention(q, k, v, segment_ids):
  """XLA reference attention with GQA. q: [b, s, h, d]; k, v: [b, s, kv, d]; softmax in float32."""
  b, s, h, d = q.shape
  kv = k.shape[2]
  q = q.reshape(b, s, kv, h // kv, d)
  scores = jnp.einsum("bqkgd,bskd->bkgqs", q, k, preferred_element_type=jnp.float32) * d**-0.5
  mask = attention_mask(segment_ids)[:, :, None]  # [b, 1, 1, q, s]
  scores = jnp.where(mask, scores, jnp.finfo(jnp.float32).min)
  probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
  out = jnp.einsum("bkgqs,bskd->bqkgd", probs, v)
  return out.reshape(b, s, h, d)


def attend(q, k, v, segment_ids, implementation: str):
  """q: [b, s, heads, d]; k, v: [b, s, kv_heads, d] (GQA: heads % kv_heads == 0) -> [b, s, heads, d]."""
  if implementation == "xla":
    return dot_product_attention(q, k, v, segment_ids)
  raise ValueError(f"model.attention={implementation!r} is not one of {IMPLEMENTATIONS}")
