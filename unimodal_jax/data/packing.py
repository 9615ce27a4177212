"""Grain stages from documents (int32 unified ids) to `PackedBatch`es: shift, split, pack, batch.

Each document is shifted before packing (inputs d[:-1], targets d[1:]), so every packed token has its true
next token as target, also at a piece boundary. A document longer than seq_len is cut only between images,
never inside <boi> ... <eoi>. Pieces are packed first-fit into rows; nothing here reads files.
"""
import dataclasses
import functools

import grain
import numpy as np

from unimodal_jax.data import batch as batch_lib
from unimodal_jax.data import vocab as vocab_lib


def image_spans(tokens: np.ndarray, vocab: vocab_lib.Vocab) -> np.ndarray:
  """[num_images, 2] positions of each image's <boi> and <eoi>; raises if the markers do not pair up."""
  boi = np.flatnonzero(tokens == vocab.boi_id)
  eoi = np.flatnonzero(tokens == vocab.eoi_id)
  paired = len(boi) == len(eoi) and np.all(boi < eoi) and np.all(eoi[:-1] < boi[1:])
  if not paired:
    raise ValueError(f"document of {len(tokens)} tokens has unpaired image markers: <boi> at {boi[:8].tolist()}, "
                     f"<eoi> at {eoi[:8].tolist()}")
  return np.stack([boi, eoi], axis=1)


def split_document(tokens: np.ndarray, vocab: vocab_lib.Vocab, seq_len: int) -> list[np.ndarray]:
  """Shifted pieces of one document: int32 [n, 2] arrays of (input, target) pairs with n <= seq_len.

  Cuts are greedy (longest piece first) and never separate two tokens of the same image, <boi>/<eoi>
  included. An image longer than seq_len cannot be placed and raises.
  """
  pairs = np.stack([tokens[:-1], tokens[1:]], axis=1)  # one feature, so the packer handles one array
  n = len(pairs)
  if n <= seq_len:
    return [pairs] if n else []
  blocked = np.zeros(n + 1, dtype=bool)  # blocked[c]: a cut before input c would split an image
  for boi, eoi in image_spans(tokens, vocab):
    if eoi - boi + 1 > seq_len:
      raise ValueError(f"an image of {eoi - boi + 1} tokens (<boi> + codes + <eoi>) does not fit in "
                       f"data.seq_len={seq_len}")
    blocked[boi + 1:eoi + 1] = True
  pieces, start = [], 0
  while n - start > seq_len:
    # The last allowed cut in (start, start + seq_len]; one exists since every image fits in seq_len.
    cut = start + 1 + np.flatnonzero(~blocked[start + 1:start + seq_len + 1])[-1]
    pieces.append(pairs[start:cut])
    start = cut
  pieces.append(pairs[start:])
  return pieces


@dataclasses.dataclass(frozen=True)
class _SplitDocuments(grain.experimental.FlatMapTransform):
  vocab: vocab_lib.Vocab
  seq_len: int
  max_fan_out: int = 1 << 20  # only MapDataset.flat_map reads it; documents here may split into many pieces

  def flat_map(self, tokens):
    return split_document(tokens, self.vocab, self.seq_len)


def _packer_element(pairs: np.ndarray) -> dict:
  return {"pairs": pairs}


def to_packed_batch(rows: dict, vocab: vocab_lib.Vocab, loss_weight_text: float,
                    loss_weight_image: float) -> batch_lib.PackedBatch:
  """Grain packer output (batched) -> PackedBatch; modality and loss weights derive from the ids here."""
  segment_ids = rows["pairs_segment_ids"]
  tokens, targets = rows["pairs"][..., 0], rows["pairs"][..., 1]
  weights = np.where(vocab.is_image(targets), loss_weight_image, loss_weight_text)
  return batch_lib.PackedBatch(
      tokens=tokens, targets=targets, segment_ids=segment_ids, positions=rows["pairs_positions"],
      modality=vocab.modality(tokens), loss_weights=np.where(segment_ids > 0, weights, 0).astype(np.float32))


def pack(ds: grain.IterDataset, *, vocab: vocab_lib.Vocab, seq_len: int, batch_size: int,
         loss_weight_text: float = 1.0, loss_weight_image: float = 1.0,
         drop_remainder: bool = True) -> grain.IterDataset:
  """Stages from an IterDataset of documents (int32 [n]) to PackedBatch [batch_size, seq_len].

  One packing round fills `batch_size` rows first-fit and becomes one batch; rows keep their fill order.
  """
  ds = grain.experimental.FlatMapIterDataset(ds, _SplitDocuments(vocab, seq_len))
  ds = ds.map(_packer_element)
  ds = grain.experimental.FirstFitPackIterDataset(
      ds, length_struct={"pairs": seq_len}, num_packing_bins=batch_size, shuffle_bins=False)
  ds = ds.batch(batch_size, drop_remainder=drop_remainder)
  return ds.map(functools.partial(to_packed_batch, vocab=vocab, loss_weight_text=loss_weight_text,
                                  loss_weight_image=loss_weight_image))
