"""Attention implementations over packed rows: causal within a document (segment), blind across documents.

`attend` dispatches on `config.model.attention` ("auto": `resolve` picks one for the platform the step is traced
for); `dot_product_attention` (XLA) is the reference and the oracle every other implementation is tested against.
No implementation may see across segments. `attend_cached` is the decoding path: new tokens against every slot of a
KV cache.
"""
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.experimental.pallas.ops.tpu import splash_attention as splash
from jax.sharding import PartitionSpec as P

IMPLEMENTATIONS = (
    "auto",  # splash on TPU, cudnn on GPU (half precision), else xla: see `resolve`
    "xla",  # any platform: materialises the [s, s] scores; the reference
    "splash",  # TPU: Pallas splash attention, skips fully masked blocks; sharded with shard_map
    "cudnn",  # GPU: cuDNN flash attention through jax.nn.dot_product_attention
)
SPLASH_MAX_BLOCK = 512  # tokens per splash tile (q and kv); MaxText's default
SPLASH_MIN_BLOCK = 128  # the TPU lane width: seq_len must be a multiple
CUDNN_DTYPES = ("bfloat16", "float16")  # cuDNN's fused attention runs in half precision only
CUDNN_MAX_HEAD_DIM = 128


def resolve(implementation: str, platform: str, dtype: str, head_dim: int, seq_len: int) -> str:
  """The implementation `implementation` names on `platform` ('tpu', 'gpu', 'cpu'); explicit names stand.

  'auto': splash on TPU (seq_len a multiple of the lane width), cuDNN flash attention on GPU (half precision,
  head_dim a multiple of 8 up to 128), otherwise the XLA reference.
  """
  if implementation != "auto":
    return implementation
  if platform == "tpu" and seq_len % SPLASH_MIN_BLOCK == 0:
    return "splash"
  if platform == "gpu" and dtype in CUDNN_DTYPES and head_dim % 8 == 0 and head_dim <= CUDNN_MAX_HEAD_DIM:
    return "cudnn"
  return "xla"


def traced_platform() -> str:
  """The platform of the devices the computation being traced will run on: the current mesh's (an AOT compile
  for TPU on a CPU host traces under a TPU mesh), else the default backend's."""
  device = getattr(jax.sharding.get_abstract_mesh(), "abstract_device", None)
  return device.platform if device is not None else jax.default_backend()


def attention_mask(segment_ids, kv_segment_ids=None, q_offset=0):
  """[b, 1, s, t] boolean: query i sees key j iff same segment and j <= i + q_offset.

  Without `kv_segment_ids` the keys are the queries (t = s). With them (a KV cache), key j is cache slot j and
  query i sits at slot q_offset + i.
  """
  kv_segment_ids = segment_ids if kv_segment_ids is None else kv_segment_ids
  s, t = segment_ids.shape[-1], kv_segment_ids.shape[-1]
  causal = (q_offset + jnp.arange(s))[:, None] >= jnp.arange(t)[None, :]
  same = segment_ids[:, :, None] == kv_segment_ids[:, None, :]
  return (causal[None] & same)[:, None]


def dot_product_attention(q, k, v, segment_ids, kv_segment_ids=None, q_offset=0):
  """XLA reference attention with GQA. q: [b, s, h, d]; k, v: [b, t, kv, d]; softmax in float32.

  t = s (keys are the queries) unless `kv_segment_ids` [b, t] and `q_offset` say where the queries sit among
  the keys (`attention_mask`).
  """
  b, s, h, d = q.shape
  kv = k.shape[2]
  q = q.reshape(b, s, kv, h // kv, d)
  scores = jnp.einsum("bqkgd,bskd->bkgqs", q, k, preferred_element_type=jnp.float32) * d**-0.5
  mask = attention_mask(segment_ids, kv_segment_ids, q_offset)[:, :, None]  # [b, 1, 1, q, t]
  scores = jnp.where(mask, scores, jnp.finfo(jnp.float32).min)
  probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
  out = jnp.einsum("bkgqs,bskd->bqkgd", probs, v)
  return out.reshape(b, s, h, d)


def splash_block_size(seq_len: int) -> int:
  """The largest tile <= SPLASH_MAX_BLOCK that divides seq_len; seq_len must be a multiple of 128."""
  if seq_len % SPLASH_MIN_BLOCK:
    raise ValueError(f"model.attention='splash' needs data.seq_len to be a multiple of {SPLASH_MIN_BLOCK}, "
                     f"got {seq_len}")
  return math.gcd(SPLASH_MAX_BLOCK, seq_len)


def _splash_kernel(num_heads: int, seq_len: int, interpret: bool):
  """A causal splash kernel over [heads, s, d] for one row; segment ids are given per call."""
  block = splash_block_size(seq_len)
  mask = splash.MultiHeadMask([splash.CausalMask((seq_len, seq_len))] * num_heads)
  sizes = splash.BlockSizes(block_q=block, block_kv=block, block_kv_compute=block, block_q_dkv=block,
                            block_kv_dkv=block, block_kv_dkv_compute=block, block_q_dq=block, block_kv_dq=block)
  return splash.make_splash_mha(mask, block_sizes=sizes, head_shards=1, q_seq_shards=1, interpret=interpret)


def splash_attention(q, k, v, segment_ids, interpret: bool = False):
  """TPU splash attention with segment ids and GQA; same shapes as `dot_product_attention`.

  Under `jax.set_mesh` and flax logical axis rules (the model's context): shard_map over the mesh axes of
  `activation_batch` and `activation_heads`, one kernel per local row, as MaxText does; without a mesh (shape
  inference at init) the whole batch is local. k and v split over q's head axes: heads are grouped
  contiguously and num_kv_heads divides by those axes' size, so each query head stays with its kv head.
  `interpret=True` runs the kernel on CPU (tests).
  """
  def local(q, k, v, segment_ids):  # [b, heads, s, d]
    kernel = _splash_kernel(q.shape[1], q.shape[2], interpret)
    return jax.vmap(kernel)(q, k, v, segment_ids=splash.SegmentIds(q=segment_ids, kv=segment_ids))

  if not jax.sharding.get_abstract_mesh().empty:
    batch_axes, head_axes = nn.logical_to_mesh_axes(("activation_batch", "activation_heads"))
    spec = P(batch_axes, head_axes, None, None)
    local = jax.shard_map(local, in_specs=(spec, spec, spec, P(batch_axes, None)), out_specs=spec, check_vma=False)
  scale = q.shape[-1] ** -0.5  # the kernel does not scale the logits
  to_heads_major = lambda x: jnp.swapaxes(x, 1, 2)
  out = local(to_heads_major(q * jnp.asarray(scale, q.dtype)), to_heads_major(k), to_heads_major(v), segment_ids)
  return to_heads_major(out)


def nn_dot_product_attention(q, k, v, segment_ids, implementation: str):
  """`jax.nn.dot_product_attention` with causal + same-segment masking (GQA native).

  'cudnn' skips the causal upper triangle in-kernel; the segment mask enters as a [b, 1, s, s] bias.
  implementation='xla' runs the same call on any platform (what the tests compare with the reference).
  """
  same_segment = (segment_ids[:, :, None] == segment_ids[:, None, :])[:, None]
  return jax.nn.dot_product_attention(q, k, v, mask=same_segment, is_causal=True, implementation=implementation)


def attend(q, k, v, segment_ids, implementation: str):
  """q: [b, s, heads, d]; k, v: [b, s, kv_heads, d] (GQA: heads % kv_heads == 0) -> [b, s, heads, d]."""
  implementation = resolve(implementation, traced_platform(), jnp.dtype(q.dtype).name, q.shape[-1], q.shape[1])
  if implementation == "xla":
    return dot_product_attention(q, k, v, segment_ids)
  if implementation == "splash":
    return splash_attention(q, k, v, segment_ids)
  if implementation == "cudnn":
    return nn_dot_product_attention(q, k, v, segment_ids, "cudnn")
  raise ValueError(f"model.attention={implementation!r} is not one of {IMPLEMENTATIONS}")


def attend_cached(q, k, v, segment_ids, kv_segment_ids, q_offset, implementation: str):
  """New tokens against a KV cache. q: [b, s, heads, d] at slots q_offset..q_offset+s-1; k, v: [b, t, kv_heads,
  d] every slot of the cache (these tokens' already written); kv_segment_ids [b, t], 0 for empty slots.

  'cudnn' (also as 'auto' resolves it) goes through `jax.nn.dot_product_attention` (cuDNN where it supports the
  shapes, else XLA); splash has no decoding kernel (its tiles are 128 queries), so 'splash' and 'xla' use the XLA
  reference.
  """
  implementation = resolve(implementation, traced_platform(), jnp.dtype(q.dtype).name, q.shape[-1], k.shape[1])
  if implementation == "cudnn":
    mask = attention_mask(segment_ids, kv_segment_ids, q_offset)
    return jax.nn.dot_product_attention(q, k, v, mask=mask)
  if implementation in IMPLEMENTATIONS:
    return dot_product_attention(q, k, v, segment_ids, kv_segment_ids, q_offset)
  raise ValueError(f"model.attention={implementation!r} is not one of {IMPLEMENTATIONS}")
