"""The KV cache decoding carries between model calls: every layer's keys and values, stacked on the scanned
`layers` axis, and the segment id of each slot. Pure data: the Transformer writes it, unimodal_jax/sample runs the loop.
"""
import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp

# Logical axes of k and v: [layers, b, kv_heads, max_len, head_dim], slots next to head_dim, the layout both attention
# matmuls read without a transposed copy of the layer (with slots before heads, XLA copied every layer every step).
KV_AXES = ("layers", "activation_batch", "activation_kv_heads", "activation_length", None)


@flax.struct.dataclass
class KVCache:
  k: jax.Array  # [layers, b, kv_heads, max_len, head_dim] compute dtype: keys after QK-norm and RoPE
  v: jax.Array  # [layers, b, kv_heads, max_len, head_dim]
  segment_ids: jax.Array  # [b, max_len] int32: each slot's segment; 0 = padding or not written yet
  index: jax.Array  # int32 scalar: the slot the next call writes its first token to; every row writes there

  @property
  def max_len(self) -> int:
    return self.segment_ids.shape[1]


def init(model_config, batch_size: int, max_len: int) -> KVCache:
  """An empty cache for `batch_size` rows of up to `max_len` tokens (GQA: kv heads only)."""
  m = model_config
  shape = (m.num_layers, batch_size, m.num_kv_heads, max_len, m.head_dim)
  zeros = jnp.zeros(shape, jnp.dtype(m.dtype))
  return KVCache(k=zeros, v=zeros, segment_ids=jnp.zeros((batch_size, max_len), jnp.int32),
                 index=jnp.zeros((), jnp.int32))


def constrain(cache: KVCache) -> KVCache:
  """`cache` laid out on the current mesh as the logical axis rules say: rows over the batch axes, kv heads over
  'tensor' (a no-op outside a mesh)."""
  return KVCache(k=nn.with_logical_constraint(cache.k, KV_AXES), v=nn.with_logical_constraint(cache.v, KV_AXES),
                 segment_ids=nn.with_logical_constraint(cache.segment_ids, ("activation_batch", "activation_length")),
                 index=cache.index)


def write_layer(buffer, new, layer, index):
  """`new` [b, s, kv_heads, head_dim] written into the stacked `buffer` [layers, b, kv_heads, max_len, head_dim] at
  layer `layer`, slots index..index+s-1: an in-place update of s slots, where a scanned (sliced and re-stacked)
  cache would copy all of it at every step."""
  zero = jnp.zeros((), jnp.int32)
  new = jnp.swapaxes(new, 1, 2)[None].astype(buffer.dtype)
  return jax.lax.dynamic_update_slice(buffer, new, (layer, zero, zero, index, zero))


def layer_view(buffer, layer):
  """Layer `layer` of the stacked `buffer` as attention takes it: [b, max_len, kv_heads, head_dim] (a transposed view
  that the attention matmuls fold into their dimension numbers)."""
  return jnp.swapaxes(jax.lax.dynamic_index_in_dim(buffer, layer, keepdims=False), 1, 2)


def write(buffer, new, index):
  """`new` [b, s, ...] written into `buffer` [b, max_len, ...] at slots index..index+s-1."""
  return jax.lax.dynamic_update_slice_in_dim(buffer, new.astype(buffer.dtype), index, axis=1)
