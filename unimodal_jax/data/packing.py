"""Packing rendered documents (int32 unified ids) into `PackedBatch`es: shift, split, first-fit, batch.

Each document is shifted before packing (inputs d[:-1], targets d[1:]), so every packed token has its true
next token as target, also at a piece boundary. A document longer than seq_len is cut only between images,
never inside <boi> ... <eoi>. Pieces go first-fit into the `batch_size` rows of the open batch; the first
piece that fits no row closes the batch. Nothing here reads files.
"""
import collections
import dataclasses

import grain
import numpy as np

from unimodal_jax.data import batch as batch_lib
from unimodal_jax.data import vocab as vocab_lib


@dataclasses.dataclass(frozen=True)
class Skipped:
  """Stands in the document stream for a bad record that was skipped: counted by the packer, never packed."""
  where: str


@dataclasses.dataclass(frozen=True)
class Filtered:
  """Stands in the document stream for a record of a kind data.document_kinds leaves out: neither packed nor
  counted as bad."""
  kind: str


def image_spans(tokens: np.ndarray, vocab: vocab_lib.Vocab) -> np.ndarray:
  """[num_images, 2] positions of each image's <boi> and <eoi>; raises if the markers do not pair up."""
  boi = np.flatnonzero(tokens == vocab.boi_id)
  eoi = np.flatnonzero(tokens == vocab.eoi_id)
  paired = len(boi) == len(eoi) and np.all(boi < eoi) and np.all(eoi[:-1] < boi[1:])
  if not paired:
    raise ValueError(f"document of {len(tokens)} tokens has unpaired image markers: <boi> at {boi[:8].tolist()}, "
                     f"<eoi> at {eoi[:8].tolist()}")
  return np.stack([boi, eoi], axis=1)


def piece_bounds(tokens: np.ndarray, vocab: vocab_lib.Vocab, seq_len: int) -> list[tuple[int, int]]:
  """(start, end) of each shifted piece of one document: inputs tokens[start:end], targets tokens[start+1:end+1].

  Pieces have at most seq_len inputs and tile [0, len(tokens) - 1). Cuts are greedy (longest piece first)
  and never separate two tokens of the same image, <boi>/<eoi> included; an image longer than seq_len
  cannot be placed and raises.
  """
  n = len(tokens) - 1
  if n <= seq_len:
    return [(0, n)] if n > 0 else []
  blocked = np.zeros(n + 1, dtype=bool)  # blocked[c]: a cut before input c would split an image
  for boi, eoi in image_spans(tokens, vocab):
    if eoi - boi + 1 > seq_len:
      raise ValueError(f"an image of {eoi - boi + 1} tokens (<boi> + codes + <eoi>) does not fit in "
                       f"data.seq_len={seq_len}")
    blocked[boi + 1:eoi + 1] = True
  bounds, start = [], 0
  while n - start > seq_len:
    # The last allowed cut in (start, start + seq_len]; one exists since every image fits in seq_len.
    cut = start + 1 + int(np.flatnonzero(~blocked[start + 1:start + seq_len + 1])[-1])
    bounds.append((start, cut))
    start = cut
  bounds.append((start, n))
  return bounds


@dataclasses.dataclass(frozen=True)
class PackSpec:
  vocab: vocab_lib.Vocab
  seq_len: int
  batch_size: int
  loss_weight_text: float = 1.0
  loss_weight_image: float = 1.0
  # Consecutive `Filtered` records after which the stream is taken to hold no document of the kinds kept
  # (0: no limit); the pipeline sets it to the number of records of its sources.
  max_filtered_in_a_row: int = 0


class _PackIterator(grain.DatasetIterator):
  """Yields (PackedBatch, number of Skipped records consumed since the previous batch).

  Between two calls of __next__ the open batch is always empty, and the pieces still to place are the tail
  of one document; so the state is that document's parent state and the index of its first unplaced piece.
  """

  def __init__(self, parent: grain.DatasetIterator, spec: PackSpec, drop_remainder: bool):
    super().__init__(parent)
    self._spec, self._drop_remainder = spec, drop_remainder
    self._positions = np.arange(spec.seq_len, dtype=np.int32)
    self._pending = collections.deque()  # (tokens, start, end) of the current document's unplaced pieces
    self._doc_state = self._parent.get_state()  # parent state before the current document
    self._doc_offset = 0  # index of _pending[0] among the current document's pieces
    self._skip_pieces = 0  # after set_state: pieces of the next document that earlier batches hold
    self._skipped = 0
    self._filtered_in_a_row = 0
    self._exhausted = False
    self._open_batch()

  def _open_batch(self):
    shape = (self._spec.batch_size, self._spec.seq_len)
    self._tokens, self._targets = np.zeros(shape, np.int32), np.zeros(shape, np.int32)
    self._segment_ids, self._row_positions = np.zeros(shape, np.int32), np.zeros(shape, np.int32)
    self._fill = np.zeros(self._spec.batch_size, np.int64)
    self._num_segments = np.zeros(self._spec.batch_size, np.int32)

  def _close_batch(self, rows: int):
    spec = self._spec
    tokens, targets, segment_ids = self._tokens[:rows], self._targets[:rows], self._segment_ids[:rows]
    weights = np.where(spec.vocab.is_image(targets), np.float32(spec.loss_weight_image),
                       np.float32(spec.loss_weight_text))
    batch = batch_lib.PackedBatch(
        tokens=tokens, targets=targets, segment_ids=segment_ids, positions=self._row_positions[:rows],
        modality=spec.vocab.modality(tokens), loss_weights=np.where(segment_ids > 0, weights, np.float32(0)))
    skipped, self._skipped = self._skipped, 0
    self._open_batch()
    return batch, skipped

  def _next_document(self) -> bool:
    """Loads the next document's pieces into _pending; False when the parent is exhausted."""
    while True:
      self._doc_state = self._parent.get_state()
      try:
        element = next(self._parent)
      except StopIteration:
        self._exhausted = True
        return False
      if isinstance(element, Skipped):
        self._skipped += 1
        continue
      if isinstance(element, Filtered):
        self._filtered_in_a_row += 1
        limit = self._spec.max_filtered_in_a_row
        if limit and self._filtered_in_a_row >= limit:
          raise ValueError(f"data.document_kinds: {self._filtered_in_a_row} records in a row were of other kinds "
                           f"(the last one {element.kind!r}); the sources hold no document of the kinds kept")
        continue
      self._filtered_in_a_row = 0
      bounds = piece_bounds(element, self._spec.vocab, self._spec.seq_len)
      self._pending.extend((element, a, b) for a, b in bounds[self._skip_pieces:])
      self._doc_offset, self._skip_pieces = self._skip_pieces, 0
      if self._pending:
        return True

  def __next__(self):
    seq_len = self._spec.seq_len
    while True:
      if not self._pending and (self._exhausted or not self._next_document()):
        rows = int(np.count_nonzero(self._fill))  # first-fit fills rows in order: used rows are a prefix
        if rows == 0 or (self._drop_remainder and rows < self._spec.batch_size):
          raise StopIteration
        return self._close_batch(rows)
      tokens, start, end = self._pending[0]
      n = end - start
      fits = self._fill <= seq_len - n
      row = int(np.argmax(fits))
      if not fits[row]:
        return self._close_batch(self._spec.batch_size)
      at = slice(int(self._fill[row]), int(self._fill[row]) + n)
      self._num_segments[row] += 1
      self._tokens[row, at] = tokens[start:end]
      self._targets[row, at] = tokens[start + 1:end + 1]
      self._segment_ids[row, at] = self._num_segments[row]
      self._row_positions[row, at] = self._positions[:n]
      self._fill[row] += n
      self._pending.popleft()
      self._doc_offset += 1

  def get_state(self):
    if self._pending:
      return {"parent": self._doc_state, "offset": self._doc_offset, "exhausted": False}
    return {"parent": self._parent.get_state(), "offset": self._skip_pieces, "exhausted": self._exhausted}

  def set_state(self, state):
    self._parent.set_state(state["parent"])
    self._pending.clear()
    self._skip_pieces, self._skipped, self._exhausted = state["offset"], 0, state["exhausted"]
    self._open_batch()


class PackIterDataset(grain.IterDataset):
  """Documents (int32 [n] unified ids, or `Skipped`) -> (PackedBatch [batch_size, seq_len], skipped count).

  Modality and loss weights derive from the ids here (loss weights by the target's modality). With
  drop_remainder=False the last batch holds only the rows it filled.
  """

  def __init__(self, parent: grain.IterDataset, spec: PackSpec, drop_remainder: bool = True):
    super().__init__(parent)
    self._spec, self._drop_remainder = spec, drop_remainder

  def __iter__(self):
    return _PackIterator(self._parent.__iter__(), self._spec, self._drop_remainder)

  def __str__(self):
    return f"PackIterDataset(seq_len={self._spec.seq_len}, batch_size={self._spec.batch_size})"
