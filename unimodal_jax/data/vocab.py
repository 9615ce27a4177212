"""The unified vocabulary (docs/design.md, "Vocabulary contract"): one id space for text, image markers and image codes.

`Vocab` is the only place that knows where each modality lives in the id space; everything that needs
"is this id an image code?" asks it. It knows nothing about how text is tokenized.
"""
import dataclasses

import numpy as np

PAD_ID = 0
BOS_ID = 1
EOS_ID = 2
TEXT_SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>")  # ids 0, 1, 2 of every text tokenizer

TEXT = 0
IMAGE = 1
MODALITIES = ("text", "image")  # index = modality id, as in PackedBatch.modality


@dataclasses.dataclass(frozen=True)
class Vocab:
  """Layout: [0, text_size) text ids, then <boi>, <eoi>, then `num_image_codes` image codes."""

  text_size: int
  num_image_codes: int

  def __post_init__(self):
    if self.text_size <= len(TEXT_SPECIAL_TOKENS):
      raise ValueError(f"Vocab.text_size={self.text_size} must exceed the {len(TEXT_SPECIAL_TOKENS)} special ids")
    if self.num_image_codes < 1:
      raise ValueError(f"Vocab.num_image_codes={self.num_image_codes} must be >= 1")

  @property
  def boi_id(self) -> int:
    return self.text_size

  @property
  def eoi_id(self) -> int:
    return self.text_size + 1

  @property
  def image_code_offset(self) -> int:
    return self.text_size + 2

  @property
  def size(self) -> int:
    return self.image_code_offset + self.num_image_codes

  def is_image(self, ids):
    """True for image-code ids (not for <boi>/<eoi>, which are text modality). numpy or jax arrays."""
    return (ids >= self.image_code_offset) & (ids < self.size)

  def modality(self, ids):
    """PackedBatch.modality for `ids`: 1 for image codes, 0 for everything else."""
    return self.is_image(ids).astype(np.int32)

  def code_of(self, ids):
    return ids - self.image_code_offset

  def id_of(self, codes):
    codes = np.asarray(codes)
    if codes.size and (codes.min() < 0 or codes.max() >= self.num_image_codes):
      raise ValueError(f"image codes must lie in [0, {self.num_image_codes}), got [{codes.min()}, {codes.max()}]")
    return (codes + self.image_code_offset).astype(np.int32)

  def image_tokens(self, codes) -> np.ndarray:
    """An image as it appears in the stream: <boi>, its codes row-major, <eoi>."""
    flat = self.id_of(np.asarray(codes).reshape(-1))
    return np.concatenate([[self.boi_id], flat, [self.eoi_id]]).astype(np.int32)


def from_config(config) -> Vocab:
  """The Vocab a run uses: text ids from `config.vocab.text_size`, image codes from the VQ codebook."""
  return Vocab(text_size=config.vocab.text_size, num_image_codes=config.vq.num_codes)


def image_tokens_per_image(config) -> int:
  """Stream length of one image: <boi> + codes + <eoi>."""
  return (config.vq.image_size // config.vq.patch_size) ** 2 + 2
