"""Next-token loss over packed batches: cross-entropy + z-loss, overall and per target modality.

Pure functions of float32 logits and a PackedBatch; the per-modality split uses `Vocab` on the targets.
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


def loss_and_metrics(logits, batch: PackedBatch, vocab: Vocab, z_loss: float):
  """The objective (weighted mean of ce + z over the batch) and metrics as float32 scalars.

  Metrics: loss, ce_loss, z_loss, loss/<modality> (weighted CE over tokens whose *target* has that
  modality; NaN-free: 0 when the batch has none) and num_tokens/<modality>.
  """
  ce, z = token_losses(logits, batch.targets, z_loss)
  w = batch.loss_weights.astype(jnp.float32)
  total_w = jnp.maximum(jnp.sum(w), 1e-9)
  ce_loss = jnp.sum(ce * w) / total_w
  z_term = jnp.sum(z * w) / total_w
  metrics = {"loss": ce_loss + z_term, "ce_loss": ce_loss, "z_loss": z_term, "num_tokens": jnp.sum(w > 0)}
  target_modality = vocab.modality(batch.targets)
  for m, name in enumerate(MODALITIES):
    wm = w * (target_modality == m)
    metrics[f"loss/{name}"] = jnp.sum(ce * wm) / jnp.maximum(jnp.sum(wm), 1e-9)
    metrics[f"num_tokens/{name}"] = jnp.sum(wm > 0)
  return metrics["loss"], metrics
