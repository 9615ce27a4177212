"""Next-token loss over packed batches: cross-entropy + z-loss, overall and per target modality.

Pure functions of float32 logits (or of the final hidden states and the output head, chunked) and a PackedBatch;
the per-modality split uses `Vocab` on the targets. Losses are kept as weighted sums until `metrics_from_sums`,
so microbatches add up to exactly one big batch.
"""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from unimodal_jax.data.batch import PackedBatch
from unimodal_jax.data.vocab import MODALITIES, Vocab
from unimodal_jax.model.transformer import output_logits

LOGITS_AXES = ("activation_batch", "activation_length", "activation_vocab")
# The head as each chunk's matmul reads it: gathered over the FSDP axes once, before the chunk loop; vocab stays
# split over 'tensor'. Its gradient accumulates in this layout and is reduce-scattered once, after the loop.
GATHERED_HEAD_AXES = ("activation_embed", "activation_vocab")


def token_losses(logits, targets, z_loss: float):
  """Per-token (cross-entropy, z-loss term), both [b, s] float32. z-loss = z * logsumexp(logits)^2."""
  logits = logits.astype(jnp.float32)
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
  z = z_loss * jnp.square(jax.nn.logsumexp(logits, axis=-1))
  return ce, z


def _chunk(x, i, size):
  """Positions [i * size, (i + 1) * size) of x [b, s, ...]."""
  return jax.lax.dynamic_slice_in_dim(x, i * size, size, axis=1)


def _chunk_logits(x, head):
  return nn.with_logical_constraint(output_logits(x, head), LOGITS_AXES)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def chunked_token_losses(hidden, head, targets, z_loss: float, chunk_size: int):
  """`token_losses(output_logits(hidden, head), targets, z_loss)`, `chunk_size` positions at a time.

  hidden [b, s, e] and head [e, v] in the compute dtype; chunk_size divides s. The float32 logits of one chunk
  [b, chunk_size, v] exist at a time, in the forward pass and again (recomputed) in the backward pass, which
  produces each chunk's hidden-state gradient and adds its head gradient into one float32 sum: the full
  [b, s, v] logits and their gradient never exist (MaxText's vocabulary tiling). Same numbers as the unchunked
  path up to the order of the head gradient's sum; like `output_logits`, the logits gradient is cast to the
  compute dtype before its two matmuls.
  """
  return _chunked_forward(hidden, head, targets, z_loss, chunk_size)


def _chunked_forward(hidden, head, targets, z_loss, chunk_size):
  b, s = targets.shape

  def body(_, i):
    return None, token_losses(_chunk_logits(_chunk(hidden, i, chunk_size), head), _chunk(targets, i, chunk_size),
                              z_loss)

  _, per_chunk = jax.lax.scan(body, None, jnp.arange(s // chunk_size))
  return tuple(jnp.moveaxis(y, 0, 1).reshape(b, s) for y in per_chunk)  # [chunks, b, c] -> [b, s]


def _chunked_fwd(hidden, head, targets, z_loss, chunk_size):
  return _chunked_forward(hidden, head, targets, z_loss, chunk_size), (hidden, head, targets)


def _chunked_bwd(z_loss, chunk_size, residuals, cotangents):
  hidden, head, targets = residuals
  g_ce, g_z = cotangents

  def body(carry, i):
    d_hidden, d_head = carry
    x = _chunk(hidden, i, chunk_size)
    logits = _chunk_logits(x, head)
    _, losses_vjp = jax.vjp(lambda l: token_losses(l, _chunk(targets, i, chunk_size), z_loss), logits)
    (g,) = losses_vjp((_chunk(g_ce, i, chunk_size), _chunk(g_z, i, chunk_size)))
    g = nn.with_logical_constraint(g.astype(x.dtype), LOGITS_AXES)
    dx = jnp.einsum("bcv,ev->bce", g, head)
    d_head = d_head + jnp.einsum("bce,bcv->ev", x, g, preferred_element_type=jnp.float32)
    return (jax.lax.dynamic_update_slice_in_dim(d_hidden, dx, i * chunk_size, axis=1), d_head), None

  d_head = nn.with_logical_constraint(jnp.zeros(head.shape, jnp.float32), GATHERED_HEAD_AXES)
  (d_hidden, d_head), _ = jax.lax.scan(body, (jnp.zeros_like(hidden), d_head),
                                       jnp.arange(targets.shape[1] // chunk_size))
  return d_hidden, d_head.astype(head.dtype), None


chunked_token_losses.defvjp(_chunked_fwd, _chunked_bwd)


def sums_from_token_losses(ce, z, batch: PackedBatch, vocab: Vocab) -> dict:
  """Loss-weighted sums over the batch: ce, z, weight, and per target modality ce/<m>, weight/<m>, count/<m>."""
  w = batch.loss_weights.astype(jnp.float32)
  sums = {"ce": jnp.sum(ce * w), "z": jnp.sum(z * w), "weight": jnp.sum(w), "count": jnp.sum(w > 0)}
  target_modality = vocab.modality(batch.targets)
  for m, name in enumerate(MODALITIES):
    wm = w * (target_modality == m)
    sums[f"ce/{name}"], sums[f"weight/{name}"], sums[f"count/{name}"] = jnp.sum(ce * wm), jnp.sum(wm), jnp.sum(wm > 0)
  return sums


def loss_sums(logits, batch: PackedBatch, vocab: Vocab, z_loss: float) -> dict:
  """`sums_from_token_losses` of float32 logits [b, s, vocab]."""
  return sums_from_token_losses(*token_losses(logits, batch.targets, z_loss), batch, vocab)


def chunked_loss_sums(hidden, head, batch: PackedBatch, vocab: Vocab, z_loss: float, chunk_size: int) -> dict:
  """`loss_sums` of the logits of hidden [b, s, e] and head [e, v] (the Transformer's `return_hidden=True`),
  computed `chunk_size` positions at a time (`chunked_token_losses`)."""
  head = nn.with_logical_constraint(head, GATHERED_HEAD_AXES)
  ce, z = chunked_token_losses(hidden, head, batch.targets, z_loss, chunk_size)
  return sums_from_token_losses(ce, z, batch, vocab)


def metrics_from_sums(sums: dict) -> dict:
  """loss (= the objective), ce_loss, z_loss, loss/<modality> (0 when the batch has none: NaN-free) and
  num_tokens, num_tokens/<modality>, as float32 scalars."""
  total_w = jnp.maximum(sums["weight"], 1e-9)
  metrics = {"ce_loss": sums["ce"] / total_w, "z_loss": sums["z"] / total_w, "num_tokens": sums["count"]}
  metrics["loss"] = metrics["ce_loss"] + metrics["z_loss"]
  for name in MODALITIES:
    metrics[f"loss/{name}"] = sums[f"ce/{name}"] / jnp.maximum(sums[f"weight/{name}"], 1e-9)
    metrics[f"num_tokens/{name}"] = sums[f"count/{name}"]
  return metrics
