"""Modality-constrained decoding: which ids each row may emit next, from one int per row (`image_left`).

An image is `<boi>`, exactly h*w codes, `<eoi>` (data/vocab.py). `image_left` is -1 outside an image, else the
codes the open image still needs; at 0 only `<eoi>` may follow. Text never holds a code, <pad> or <bos> is never
emitted, nor any id past the unified vocabulary (the model's padding rows).
"""
import dataclasses

import jax.numpy as jnp
import numpy as np

from unimodal_jax.data import vocab as vocab_lib

MODES = ("text", "image", "interleaved")  # text only | one image, then stop | text that may open images
OUTSIDE = -1  # image_left of a row that is not inside an image


@dataclasses.dataclass(frozen=True)
class Grammar:
  """The constraint of one sampling call (static: hashable)."""

  vocab: vocab_lib.Vocab
  codes_per_image: int  # h * w
  model_vocab_size: int  # logits width: ids from vocab.size on are padding rows
  mode: str

  def __post_init__(self):
    if self.mode not in MODES:
      raise ValueError(f"sampling mode {self.mode!r} is not one of {MODES}")


def open_image_codes(tokens, vocab: vocab_lib.Vocab) -> int | None:
  """Codes after the last `<boi>` of `tokens` when that image is still open (no `<eoi>` after it), else None."""
  tokens = np.asarray(tokens)
  opens = np.flatnonzero(tokens == vocab.boi_id)
  if not opens.size or (tokens[opens[-1]:] == vocab.eoi_id).any():
    return None
  return int(len(tokens) - opens[-1] - 1)


def initial_image_left(prompt, grammar: Grammar) -> int:
  """`image_left` after `prompt`; raises if the prompt's open image already has more codes than an image holds."""
  codes = open_image_codes(prompt, grammar.vocab)
  if codes is None:
    return OUTSIDE
  if codes > grammar.codes_per_image:
    raise ValueError(f"the prompt's open image has {codes} codes; an image has {grammar.codes_per_image}")
  return grammar.codes_per_image - codes


def allowed(grammar: Grammar, image_left, no_boi=None):
  """[b, model_vocab_size] bool: the ids each row may emit next. `no_boi` [b] bool also forbids opening an image."""
  v = grammar.vocab
  ids = jnp.arange(grammar.model_vocab_size)
  text = ((ids >= len(vocab_lib.TEXT_SPECIAL_TOKENS)) & (ids < v.text_size)) | (ids == vocab_lib.EOS_ID)
  outside = jnp.broadcast_to(text, (image_left.shape[0], ids.shape[0]))
  if grammar.mode == "interleaved":
    boi = (ids == v.boi_id)[None]
    outside = outside | (boi if no_boi is None else boi & ~no_boi[:, None])
  codes = v.is_image(ids)[None]
  left = image_left[:, None]
  return jnp.where(left < 0, outside, jnp.where(left > 0, codes, (ids == v.eoi_id)[None]))


def advance(grammar: Grammar, image_left, token):
  """`image_left` after each row emits `token`."""
  v = grammar.vocab
  left = jnp.where(token == v.boi_id, grammar.codes_per_image, image_left)
  left = jnp.where(v.is_image(token), image_left - 1, left)
  return jnp.where(token == v.eoi_id, OUTSIDE, left)


def stops(grammar: Grammar, token):
  """[b] bool: the token ends its row: `<eos>`, or in image mode the image's `<eoi>`."""
  stop = token == vocab_lib.EOS_ID
  return stop | (token == grammar.vocab.eoi_id) if grammar.mode == "image" else stop
