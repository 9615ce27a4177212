"""The early-fusion decoder (docs/design.md, "Model"): one transformer over the interleaved token stream.

Flax linen; every parameter carries logical axis names (never mesh axes). Attention is causal
within a packed document and blind across documents (segment ids). Training logic lives elsewhere.
"""
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from unimodal_jax.data.batch import PackedBatch
from unimodal_jax.model import attention, axes, dense, experts, kv_cache

Dtype = Any

REMAT_POLICIES = {
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_with_no_batch_dims": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def apply_rope(x, positions, theta):
  """Rotary embedding, rotate-half convention (transformers). x: [b, s, h, d]; positions: [b, s]."""
  half = x.shape[-1] // 2
  freq = theta ** (-jnp.arange(half, dtype=jnp.float32) / half)
  angle = positions[..., None].astype(jnp.float32) * freq  # [b, s, half]
  cos, sin = jnp.cos(angle)[:, :, None, :], jnp.sin(angle)[:, :, None, :]
  x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
  return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1).astype(x.dtype)


def embed_lookup(table, tokens, dtype):
  """table [vocab, embed] (sharded as its logical axes say) at tokens [b, s] -> [b, s, embed] rows-sharded.

  Under a mesh the lookup is explicit (shard_map), as MaxText's partitioner ends up doing: each device
  gathers the token ids of its FSDP group (tiny), looks them up in its own [vocab/tensor, embed/fsdp] block,
  sums the vocab blocks over 'tensor' and trades embed slices for rows with one all-to-all over 'fsdp'. The
  float32 table is never all-gathered, and its gradient stays in its shard (no table-sized all-reduce).
  Left to SPMD, a sharded table's gather fully rematerialises on data x fsdp x tensor meshes.
  """
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty:
    return jnp.take(table, tokens, axis=0).astype(dtype)

  vocab_axes, embed_axes, batch_axes = (axes.mesh_axes(name, mesh) for name in ("vocab", "embed", "activation_batch"))
  if tokens.shape[0] % math.prod(mesh.shape[a] for a in batch_axes) or not set(embed_axes) <= set(batch_axes):
    # e.g. the one-row batch of parameter initialisation: gather from a table whose embed dim is whole
    table = nn.with_logical_constraint(table, ("activation_vocab", "activation_embed"))
    return jnp.take(table, tokens, axis=0).astype(dtype)

  def local(table, tokens):  # table [vocab/tensor, embed/fsdp]; tokens [rows/(data*fsdp), s]
    if embed_axes:
      tokens = jax.lax.all_gather(tokens, embed_axes, axis=0, tiled=True)
    rows = table.shape[0]
    ids = tokens - (jax.lax.axis_index(vocab_axes) * rows if vocab_axes else 0)
    found = (ids >= 0) & (ids < rows)
    x = jnp.where(found[..., None], jnp.take(table.astype(dtype), jnp.clip(ids, 0, rows - 1), axis=0), 0)
    if vocab_axes:
      x = jax.lax.psum(x, vocab_axes)
    return jax.lax.all_to_all(x, embed_axes, 0, 2, tiled=True) if embed_axes else x

  table_spec = jax.sharding.PartitionSpec(vocab_axes or None, embed_axes or None)
  rows_spec = jax.sharding.PartitionSpec(batch_axes or None)
  return jax.shard_map(local, mesh=mesh, in_specs=(table_spec, rows_spec), out_specs=rows_spec,
                       axis_names=set(mesh.axis_names))(table, tokens)


@jax.custom_vjp
def output_logits(x, head):
  """x [b, s, e] @ head [e, v] -> float32 logits (float32 accumulation, no rounding to the compute dtype).

  The backward pass casts the float32 logits gradient to the compute dtype first: without it both gradient
  matmuls (the largest in the step at Chameleon's 65k vocabulary) would run in float32 on a gathered,
  upcast copy of the head.
  """
  return jnp.einsum("bse,ev->bsv", x, head, preferred_element_type=jnp.float32)


def _output_logits_fwd(x, head):
  return output_logits(x, head), (x, head)


def _output_logits_bwd(residuals, g):
  x, head = residuals
  g = g.astype(x.dtype)
  dx = jnp.einsum("bsv,ev->bse", g, head)
  dhead = jnp.einsum("bse,bsv->ev", x, g, preferred_element_type=jnp.float32).astype(head.dtype)
  return dx, dhead


output_logits.defvjp(_output_logits_fwd, _output_logits_bwd)


class RMSNorm(nn.Module):
  eps: float
  dtype: Dtype
  copies: int = 1

  @nn.compact
  def __call__(self, x, routing=None):
    # "norm", not "embed": a few KB per layer, replicated rather than FSDP-gathered at every use (as MaxText)
    x32 = x.astype(jnp.float32)
    y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
    return dense.ExpertScale(("norm",), self.copies)(y, routing).astype(self.dtype)


class HeadNorm(nn.Module):
  """QK-norm over head_dim with per-head parameters of shape (heads, head_dim).

  'layernorm': weight and bias (Chameleon); 'rmsnorm': weight only (Qwen2/BAGEL).
  """

  kind: str
  eps: float
  heads_axis: str
  copies: int = 1

  @nn.compact
  def __call__(self, x, routing=None):  # [b, s, h, d]
    x32 = x.astype(jnp.float32)
    if self.kind == "layernorm":
      x32 = x32 - jnp.mean(x32, axis=-1, keepdims=True)
    y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
    affine = dense.ExpertScale((self.heads_axis, "head_dim"), self.copies, bias=self.kind == "layernorm")
    return affine(y, routing).astype(x.dtype)


class Attention(nn.Module):
  """GQA self-attention with RoPE and optional QK-norm. With the stacked cache `kv` = (k, v) [layers, b, kv_heads,
  max_len, head_dim], these tokens' keys and values are written at layer `layer`, slot `cache_index`, and the queries
  attend over every slot of that layer whose segment (`kv_segment_ids`) is theirs; returns the output and the updated
  (k, v)."""

  config: Any

  @nn.compact
  def __call__(self, x, positions, segment_ids, routing, kv_segment_ids=None, cache_index=None, kv=None, layer=None):
    c = self.config
    n = dense.copies(c, "attention")
    heads = {"q": (c.num_heads, "heads"), "k": (c.num_kv_heads, "kv_heads"), "v": (c.num_kv_heads, "kv_heads")}
    q, k, v = dense.ExpertDense(
        tuple((f"{p}_kernel", (h, c.head_dim), (axis, "head_dim")) for p, (h, axis) in heads.items()),
        in_axes=("embed",), parallel=("out", "activation_heads"), copies=n,
        biases=tuple(f"{p}_bias" for p in heads) if c.qkv_bias else ())(x, routing)
    if c.qk_norm != "none":
      n_norm = dense.copies(c, "qk_norm")
      q = HeadNorm(c.qk_norm, c.norm_eps, "heads", n_norm, name="q_norm")(q, routing)
      k = HeadNorm(c.qk_norm, c.norm_eps, "kv_heads", n_norm, name="k_norm")(k, routing)
    q = apply_rope(q, positions, c.rope_theta)
    k = apply_rope(k, positions, c.rope_theta)
    q = nn.with_logical_constraint(q, ("activation_batch", "activation_length", "activation_heads", None))
    if kv is None:
      k, v = (nn.with_logical_constraint(y, ("activation_batch", "activation_length", "activation_kv_heads", None))
              for y in (k, v))
      out = attention.attend(q, k, v, segment_ids, c.attention)
    else:
      kv = tuple(nn.with_logical_constraint(kv_cache.write_layer(buffer, new, layer, cache_index), kv_cache.KV_AXES)
                 for buffer, new in zip(kv, (k, v)))
      k, v = (kv_cache.layer_view(buffer, layer) for buffer in kv)
      out = attention.attend_cached(q, k, v, segment_ids, kv_segment_ids, cache_index, c.attention)
    o = dense.ExpertDense((("o_kernel", (c.embed_dim,), ("embed",)),), in_axes=("heads", "head_dim"),
                          parallel=("in", "activation_heads"), copies=n)
    return o(out, routing)[0], kv


class MLP(nn.Module):
  """SwiGLU: wo(silu(x wi_0) * x wi_1)."""

  config: Any

  @nn.compact
  def __call__(self, x, routing):
    c = self.config
    n = dense.copies(c, "mlp")
    gate, up = dense.ExpertDense(tuple((name, (c.mlp_dim,), ("mlp",)) for name in ("wi_0", "wi_1")),
                                 in_axes=("embed",), parallel=("out", "activation_mlp"), copies=n)(x, routing)
    h = nn.with_logical_constraint(nn.silu(gate) * up, ("activation_batch", "activation_length", "activation_mlp"))
    wo = dense.ExpertDense((("wo", (c.embed_dim,), ("embed",)),), in_axes=("mlp",),
                           parallel=("in", "activation_mlp"), copies=n)
    return wo(h, routing)[0]


class Block(nn.Module):
  """One decoder layer. 'pre': h = x + attn(norm(x)); 'swin': h = x + norm(attn(x)) (Chameleon-34B).

  Scanned over layers: the carry is x and the whole stacked cache `kv` (or None), which each layer updates in place
  at its own index `layer` (the scanned input).
  """

  config: Any
  deterministic: bool

  @nn.compact
  def __call__(self, carry, positions, segment_ids, routing, kv_segment_ids, cache_index, layer):
    x, kv = carry
    c = self.config
    dtype = jnp.dtype(c.dtype)
    drop = nn.Dropout(c.dropout_rate, deterministic=self.deterministic)
    n_norm = dense.copies(c, "block_norms")
    attn_norm = RMSNorm(c.norm_eps, dtype, n_norm, name="attn_norm")
    mlp_norm = RMSNorm(c.norm_eps, dtype, n_norm, name="mlp_norm")
    attn, mlp = Attention(c, name="attn"), MLP(c, name="mlp")
    attend = lambda y: attn(y, positions, segment_ids, routing, kv_segment_ids, cache_index, kv, layer)  # noqa: E731
    if c.norm_order == "pre":
      a, kv = attend(attn_norm(x, routing))
      h = x + drop(a)
      out = h + drop(mlp(mlp_norm(h, routing), routing))
    else:
      a, kv = attend(x)
      h = x + drop(attn_norm(a, routing))
      out = h + drop(mlp_norm(mlp(h, routing), routing))
    out = nn.with_logical_constraint(out, ("activation_batch", "activation_length", "activation_embed"))
    return (out, kv), None


def batch_inputs(batch: PackedBatch) -> dict:
  """The Transformer's inputs from a PackedBatch: `model.apply(variables, **batch_inputs(batch))`."""
  return {"tokens": batch.tokens, "positions": batch.positions, "segment_ids": batch.segment_ids,
          "modality": batch.modality}


class Transformer(nn.Module):
  """Decoder-only LM over the unified vocabulary. Returns float32 logits [b, s, vocab_size], or with
  `return_hidden=True` the final normed hidden states [b, s, embed] and the output head [embed, vocab_size],
  both in the compute dtype, for a loss that applies the head itself (model/loss.py, chunked).

  Inputs are [b, s] int32 arrays: `tokens`, `positions` (inside each document), `segment_ids` (1.. per document, 0
  = padding) and `modality` (data/vocab.py; routes MoT experts). With model.num_experts > 1 it is a
  Mixture-of-Transformers: the weight groups in model.mot_untied have one copy per modality and each token uses its
  own; attention stays global over the row. The embedding and output head are shared.

  With a `cache` (model/kv_cache.py) the tokens are the next `s` of each row, written at slot `cache.index` and
  attending over every slot before them; the call returns (logits, the updated cache).
  """

  config: Any  # the `model` section of the run config

  @nn.compact
  def __call__(self, tokens, positions, segment_ids, modality, cache: kv_cache.KVCache | None = None,
               deterministic: bool = True, return_hidden: bool = False, logits_at=None):
    """`logits_at` [b] int32: only that token's logits per row, [b, 1, vocab] (a prompt's last, when prefilling)."""
    c = self.config
    dtype = jnp.dtype(c.dtype)
    embedding = dense.param(self, "embedding", nn.initializers.normal(0.02), (c.vocab_size, c.embed_dim),
                            ("vocab", "embed"))
    x = embed_lookup(embedding, tokens, dtype)
    x = nn.with_logical_constraint(x, ("activation_batch", "activation_length", "activation_embed"))

    block = Block
    if c.remat_policy != "none":
      block = nn.remat(Block, policy=REMAT_POLICIES[c.remat_policy], prevent_cse=False)
    layers = nn.scan(block, variable_axes={"params": 0}, split_rngs={"params": True, "dropout": True},
                     in_axes=(nn.broadcast,) * 5 + (0,), length=c.num_layers,
                     metadata_params={nn.PARTITION_NAME: "layers"})
    routing = experts.route(modality, c.num_experts, c.mot_impl) if c.num_experts > 1 else None
    kv_segment_ids = cache_index = kv = layer_ids = None
    if cache is not None:
      kv_segment_ids = kv_cache.write(cache.segment_ids, segment_ids, cache.index)
      cache_index, kv, layer_ids = cache.index, (cache.k, cache.v), jnp.arange(c.num_layers, dtype=jnp.int32)
    (x, kv), _ = layers(c, deterministic, name="layers")((x, kv), positions, segment_ids, routing, kv_segment_ids,
                                                         cache_index, layer_ids)
    if logits_at is not None:
      x = jnp.take_along_axis(x, logits_at[:, None, None], axis=1)
      routing = None if routing is None else routing.replace(
          expert=jnp.take_along_axis(routing.expert, logits_at[:, None], axis=1))
    x = RMSNorm(c.norm_eps, dtype, dense.copies(c, "final_norm"), name="final_norm")(x, routing)

    if c.tie_embeddings:
      head = embedding.T
    else:
      head = dense.param(self, "lm_head", nn.initializers.normal(c.embed_dim**-0.5), (c.embed_dim, c.vocab_size),
                         ("embed", "vocab"))
    if return_hidden:
      return x, head.astype(dtype)
    logits = output_logits(x, head.astype(dtype))
    logits = nn.with_logical_constraint(logits, ("activation_batch", "activation_length", "activation_vocab"))
    if cache is None:
      return logits
    return logits, kv_cache.KVCache(k=kv[0], v=kv[1], segment_ids=kv_segment_ids, index=cache.index + tokens.shape[1])
