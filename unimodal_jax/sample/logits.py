"""Next-token choice from float32 logits: classifier-free guidance over batched streams, CM3Leon's CD-K head filter,
repetition penalty, temperature, top-k, top-p. Pure functions of [rows, vocab] arrays and an explicit key."""
import jax
import jax.numpy as jnp

NEG_INF = -jnp.inf


def guide(streams, text_scale: float, image_scale: float):
  """Classifier-free guidance. `streams` [n, b, v]: the conditional stream, then (n = 3) the image-conditioned one
  (only the prompt's images kept), then the unconditional one (the null condition, `<bos>`).

  n = 2: uncond + text_scale * (cond - uncond). n = 3 (Chameleon's InstructPix2Pix-style image sampler):
  uncond + image_scale * (image_cond - uncond) + text_scale * (cond - image_cond). Both scales 1: the conditional.
  """
  if streams.shape[0] == 1:
    return streams[0]
  cond, uncond = streams[0], streams[-1]
  if streams.shape[0] == 2:
    return uncond + text_scale * (cond - uncond)
  image_cond = streams[1]
  return uncond + image_scale * (image_cond - uncond) + text_scale * (cond - image_cond)


def cd_k_head(cond_logits, k: int, alpha: float):
  """CM3Leon's CD-K plausibility head [b, v] bool: ids whose conditional probability is at least alpha times the
  k-th largest one (Li et al.'s contrastive decoding with max replaced by the k-th max). alpha = 0 keeps every id."""
  probs = jax.nn.softmax(cond_logits, axis=-1)
  kth = jax.lax.top_k(probs, k)[0][:, -1:]
  return probs >= alpha * kth


def penalize_repetition(logits, seen, penalty: float):
  """transformers' repetition penalty on the ids in `seen` [b, v] bool: positive logits / penalty, negative ones
  * penalty."""
  return jnp.where(seen, jnp.where(logits > 0, logits / penalty, logits * penalty), logits)


def top_k_filter(logits, k: int):
  """Keep each row's k largest logits (ties at the k-th all kept)."""
  kth = jax.lax.top_k(logits, k)[0][:, -1:]
  return jnp.where(logits < kth, NEG_INF, logits)


def top_p_filter(logits, p: float):
  """Nucleus: keep the smallest set of largest-probability ids whose mass reaches p (the top id always)."""
  order = jnp.argsort(-logits, axis=-1)
  sorted_logits = jnp.take_along_axis(logits, order, axis=-1)
  probs = jax.nn.softmax(sorted_logits, axis=-1)
  mass_before = jnp.cumsum(probs, axis=-1) - probs
  keep_sorted = mass_before < p
  keep = jnp.zeros_like(keep_sorted).at[jnp.arange(logits.shape[0])[:, None], order].set(keep_sorted)
  return jnp.where(keep, logits, NEG_INF)


def choose(logits, key, temperature: float, top_k: int, top_p: float):
  """One id per row: the argmax when temperature is 0, else a draw from softmax(logits / temperature) after the
  top-k and top-p filters (0 and 1 turn them off). -inf logits are never drawn."""
  if temperature == 0:
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  logits = logits / temperature
  if top_k > 0:
    logits = top_k_filter(logits, top_k)
  if top_p < 1.0:
    logits = top_p_filter(logits, top_p)
  return jax.random.categorical(key, logits, axis=-1).astype(jnp.int32)
