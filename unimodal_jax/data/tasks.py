"""Task formatting: which segments a checked `Document` is trained as, drawn from an explicit rng.

An image_text_pair becomes caption -> image (probability data.caption_first_ratio) or image -> caption; a
caption -> image pair drops its caption for the null condition with probability data.cfg_dropout (classifier-
free guidance, as CM3Leon), leaving `<bos> <boi> codes <eoi> <eos>`. Other kinds are trained as stored.
"""
import dataclasses

import numpy as np

from unimodal_jax.data import documents


@dataclasses.dataclass(frozen=True)
class TaskSpec:
  caption_first_ratio: float = 0.5
  cfg_dropout: float = 0.0

  @classmethod
  def from_config(cls, config) -> "TaskSpec":
    return cls(caption_first_ratio=config.data.caption_first_ratio, cfg_dropout=config.data.cfg_dropout)


def format_segments(doc: documents.Document, spec: TaskSpec, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
  """The segments to render; `doc` must have passed `documents.check_document`."""
  if doc.kind != "image_text_pair":
    return doc.segments
  first, second = doc.segments
  image, text = (first, second) if documents.is_image(first) else (second, first)
  caption_first, drop = rng.random(2)  # both draws always, so the stream of choices is easy to reason about
  if caption_first < spec.caption_first_ratio:
    return (image,) if drop < spec.cfg_dropout else (text, image)
  return (image, text)
