"""Next-token loss over packed batches: cross-entropy + z-loss, overall and per target modality.

Pure functions of float32 logits and a PackedBatch; the per-modality split uses `Vocab` on the targets.
Losses are kept as weighted sums until `metrics_from_sums`, so microbatches add up to exactly one big batch.
"""
import jax
import jax.numpy as jnp
import optax

from unimodal_jax.data.batch import PackedBatch
from unimodal_jax.data.vocab import MODALITIES, Vocab


def token_losses(logits, targets, z_loss: float):
  """Per-token (cross-entropy, z-loss term), both [b, s] float32. z-loss = z * logsumexp(logits)^2."""
  logits = logits.astype(jnp.float32)
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
  z = z_loss * jnp.square(jax.nn.logsumexp(logits, axis=-1))
  return ce, z


def loss_sums(logits, batch: PackedBatch, vocab: Vocab, z_loss: float) -> dict:
  """Loss-weighted sums over the batch: ce, z, weight, and per target modality ce/<m>, weight/<m>, count/<m>."""
  ce, z = token_losses(logits, batch.targets, z_loss)
  w = batch.loss_weights.astype(jnp.float32)
  sums = {"ce": jnp.sum(ce * w), "z": jnp.sum(z * w), "weight": jnp.sum(w), "count": jnp.sum(w > 0)}
  target_modality = vocab.modality(batch.targets)
  for m, name in enumerate(MODALITIES):
    wm = w * (target_modality == m)
    sums[f"ce/{name}"], sums[f"weight/{name}"], sums[f"count/{name}"] = jnp.sum(ce * wm), jnp.sum(wm), jnp.sum(wm > 0)
  return sums


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

