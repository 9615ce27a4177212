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
from unimodal_jax.model import attention, experts

Dtype = Any

REMAT_POLICIES = {
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_with_no_batch_dims": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def _param(module, name, init, shape, axes, copies: int = 1):
  """A float32 parameter with logical axes; `copies` > 1 adds a leading `expert` axis (one copy per expert)."""
  if copies > 1:
    shape, axes = (copies, *shape), ("expert", *axes)
  return module.param(name, nn.with_logical_partitioning(init, axes), shape, jnp.float32)


def _dense_init(fan_in):
  return nn.initializers.normal(stddev=fan_in**-0.5)


def copies(config, group: str) -> int:
  """How many copies of the weights in `group` (config.MOT_GROUPS) the model holds: 1 = tied/dense."""
  return config.num_experts if config.num_experts > 1 and group in config.mot_untied else 1


def per_token(param, routing, untied: bool):
  """An elementwise parameter as each token sees it: its expert's copy when untied."""
  return experts.select(routing, param) if untied else param


def linear(x, kernels, routing, untied: bool, parallel: tuple[str, str]):
  """x [b, s, *in] times each kernel [(experts,) *in, *out] -> a list of [b, s, *out].

  `parallel`: the side ('in' or 'out') and logical axis that tensor parallelism splits (for MoT).
  """
  lead, n_in = int(untied), x.ndim - 2
  flat_x = x.reshape(*x.shape[:2], -1)
  out_shapes = [k.shape[lead + n_in:] for k in kernels]
  flat = [k.reshape(*k.shape[:lead], flat_x.shape[-1], -1).astype(x.dtype) for k in kernels]
  ys = experts.matmuls(routing, flat_x, flat, parallel) if untied else [flat_x @ k for k in flat]
  return [y.reshape(*x.shape[:2], *shape) for y, shape in zip(ys, out_shapes)]


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

  def mesh_axes(logical):  # the mesh axes of size > 1 a logical axis maps to under the current rules
    axes = nn.logical_to_mesh_axes((logical,))[0]
    return tuple(a for a in ((axes,) if isinstance(axes, str) else axes or ()) if mesh.shape[a] > 1)

  vocab_axes, embed_axes, batch_axes = mesh_axes("vocab"), mesh_axes("embed"), mesh_axes("activation_batch")
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
    scale = _param(self, "scale", nn.initializers.ones, (x.shape[-1],), ("norm",), self.copies)
    x32 = x.astype(jnp.float32)
    y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
    return (y * per_token(scale, routing, self.copies > 1)).astype(self.dtype)


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
    shape, axes, untied = x.shape[-2:], (self.heads_axis, "head_dim"), self.copies > 1
    x32 = x.astype(jnp.float32)
    if self.kind == "layernorm":
      x32 = x32 - jnp.mean(x32, axis=-1, keepdims=True)
    y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
    y = y * per_token(_param(self, "scale", nn.initializers.ones, shape, axes, self.copies), routing, untied)
    if self.kind == "layernorm":
      y = y + per_token(_param(self, "bias", nn.initializers.zeros, shape, axes, self.copies), routing, untied)
    return y.astype(x.dtype)


class Attention(nn.Module):
  config: Any

  def _kernel(self, name, shape, axes, fan_in, n):
    return _param(self, name, _dense_init(fan_in), shape, axes, n)

  @nn.compact
  def __call__(self, x, segment_ids, positions, routing):
    c = self.config
    n, untied = copies(c, "attention"), copies(c, "attention") > 1
    heads = {"q": (c.num_heads, "heads"), "k": (c.num_kv_heads, "kv_heads"), "v": (c.num_kv_heads, "kv_heads")}
    kernels = [self._kernel(f"{p}_kernel", (c.embed_dim, h, c.head_dim), ("embed", axis, "head_dim"), c.embed_dim, n)
               for p, (h, axis) in heads.items()]
    q, k, v = linear(x, kernels, routing, untied, ("out", "activation_heads"))
    if c.qkv_bias:
      q, k, v = [y + per_token(_param(self, f"{p}_bias", nn.initializers.zeros, (h, c.head_dim), (axis, "head_dim"), n),
                               routing, untied).astype(y.dtype) for y, (p, (h, axis)) in zip((q, k, v), heads.items())]
    if c.qk_norm != "none":
      n_norm = copies(c, "qk_norm")
      q = HeadNorm(c.qk_norm, c.norm_eps, "heads", n_norm, name="q_norm")(q, routing)
      k = HeadNorm(c.qk_norm, c.norm_eps, "kv_heads", n_norm, name="k_norm")(k, routing)
    q = apply_rope(q, positions, c.rope_theta)
    k = apply_rope(k, positions, c.rope_theta)
    q = nn.with_logical_constraint(q, ("activation_batch", "activation_length", "activation_heads", None))
    k = nn.with_logical_constraint(k, ("activation_batch", "activation_length", "activation_kv_heads", None))
    v = nn.with_logical_constraint(v, ("activation_batch", "activation_length", "activation_kv_heads", None))
    out = attention.attend(q, k, v, segment_ids, c.attention)
    o_kernel = self._kernel("o_kernel", (c.num_heads, c.head_dim, c.embed_dim), ("heads", "head_dim", "embed"),
                            c.num_heads * c.head_dim, n)
    return linear(out, [o_kernel], routing, untied, ("in", "activation_heads"))[0]


class MLP(nn.Module):
  """SwiGLU: wo(silu(x wi_0) * x wi_1)."""

  config: Any

  @nn.compact
  def __call__(self, x, routing):
    c = self.config
    n, untied = copies(c, "mlp"), copies(c, "mlp") > 1
    wi_0 = _param(self, "wi_0", _dense_init(c.embed_dim), (c.embed_dim, c.mlp_dim), ("embed", "mlp"), n)
    wi_1 = _param(self, "wi_1", _dense_init(c.embed_dim), (c.embed_dim, c.mlp_dim), ("embed", "mlp"), n)
    wo = _param(self, "wo", _dense_init(c.mlp_dim), (c.mlp_dim, c.embed_dim), ("mlp", "embed"), n)
    gate, up = linear(x, [wi_0, wi_1], routing, untied, ("out", "activation_mlp"))
    h = nn.with_logical_constraint(nn.silu(gate) * up, ("activation_batch", "activation_length", "activation_mlp"))
    return linear(h, [wo], routing, untied, ("in", "activation_mlp"))[0]


class Block(nn.Module):
  """One decoder layer. 'pre': h = x + attn(norm(x)); 'swin': h = x + norm(attn(x)) (Chameleon-34B)."""

  config: Any
  deterministic: bool

  @nn.compact
  def __call__(self, x, segment_ids, positions, routing):
    c = self.config
    dtype = jnp.dtype(c.dtype)
    drop = nn.Dropout(c.dropout_rate, deterministic=self.deterministic)
    n_norm = copies(c, "block_norms")
    attn_norm = RMSNorm(c.norm_eps, dtype, n_norm, name="attn_norm")
    mlp_norm = RMSNorm(c.norm_eps, dtype, n_norm, name="mlp_norm")
    attn, mlp = Attention(c, name="attn"), MLP(c, name="mlp")
    if c.norm_order == "pre":
      h = x + drop(attn(attn_norm(x, routing), segment_ids, positions, routing))
      out = h + drop(mlp(mlp_norm(h, routing), routing))
    else:
      h = x + drop(attn_norm(attn(x, segment_ids, positions, routing), routing))
      out = h + drop(mlp_norm(mlp(h, routing), routing))
    out = nn.with_logical_constraint(out, ("activation_batch", "activation_length", "activation_embed"))
    return out, None


class Transformer(nn.Module):
  """Decoder-only LM over the unified vocabulary. Returns float32 logits [b, s, vocab_size], or with
  `return_hidden=True` the final normed hidden states [b, s, embed] and the output head [embed, vocab_size],
  both in the compute dtype, for a loss that applies the head itself (model/loss.py, chunked).

  With model.num_experts > 1 it is a Mixture-of-Transformers: the weight groups in model.mot_untied have
  one copy per modality and each token (routed by PackedBatch.modality) uses its own; attention stays
  global over the row. The embedding and output head are shared.
  """

  config: Any  # the `model` section of the run config

  @nn.compact
  def __call__(self, batch: PackedBatch, deterministic: bool = True, return_hidden: bool = False):
    c = self.config
    dtype = jnp.dtype(c.dtype)
    embedding = _param(self, "embedding", nn.initializers.normal(0.02), (c.vocab_size, c.embed_dim), ("vocab", "embed"))
    x = embed_lookup(embedding, batch.tokens, dtype)
    x = nn.with_logical_constraint(x, ("activation_batch", "activation_length", "activation_embed"))

    block = Block
    if c.remat_policy != "none":
      block = nn.remat(Block, policy=REMAT_POLICIES[c.remat_policy], prevent_cse=False)
    layers = nn.scan(block, variable_axes={"params": 0}, split_rngs={"params": True, "dropout": True},
                     in_axes=(nn.broadcast, nn.broadcast, nn.broadcast), length=c.num_layers,
                     metadata_params={nn.PARTITION_NAME: "layers"})
    routing = experts.route(batch.modality, c.num_experts, c.mot_impl) if c.num_experts > 1 else None
    x, _ = layers(c, deterministic, name="layers")(x, batch.segment_ids, batch.positions, routing)
    x = RMSNorm(c.norm_eps, dtype, copies(c, "final_norm"), name="final_norm")(x, routing)

    if c.tie_embeddings:
      head = embedding.T
    else:
      head = _param(self, "lm_head", _dense_init(c.embed_dim), (c.embed_dim, c.vocab_size), ("embed", "vocab"))
    if return_hidden:
      return x, head.astype(dtype)
    logits = output_logits(x, head.astype(dtype))
    return nn.with_logical_constraint(logits, ("activation_batch", "activation_length", "activation_vocab"))
