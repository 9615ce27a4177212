"""Synthetic PackedBatches for model tests: random documents with images, packed by hand."""
import numpy as np

from unimodal_jax.data.batch import PackedBatch


def random_document(rng, vocab, length, num_images, image_tokens):
  """A token array of `length` ids: random text with `num_images` images (<boi> codes <eoi>) inside."""
  doc = rng.integers(3, vocab.text_size, size=length).astype(np.int32)
  for _ in range(num_images):
    start = rng.integers(0, length - image_tokens + 1)
    doc[start:start + image_tokens] = vocab.image_tokens(rng.integers(0, vocab.num_image_codes, image_tokens - 2))
  return doc


def pack_rows(rows_of_docs, seq_len, vocab):
  """PackedBatch from lists of documents per row: input = doc[:-1], target = doc[1:], padding after."""
  b = len(rows_of_docs)
  fields = {k: np.zeros((b, seq_len), np.int32) for k in ("tokens", "targets", "segment_ids", "positions")}
  weights = np.zeros((b, seq_len), np.float32)
  for r, docs in enumerate(rows_of_docs):
    at = 0
    for seg, doc in enumerate(docs, start=1):
      n = len(doc) - 1
      sl = slice(at, at + n)
      fields["tokens"][r, sl], fields["targets"][r, sl] = doc[:-1], doc[1:]
      fields["segment_ids"][r, sl], fields["positions"][r, sl] = seg, np.arange(n)
      weights[r, sl] = 1.0
      at += n
    assert at <= seq_len, "documents do not fit the row"
  return PackedBatch(modality=vocab.modality(fields["tokens"]), loss_weights=weights, **fields)


def random_batch(rng, vocab, batch_size, seq_len, image_tokens, docs_per_row=3):
  rows = []
  for _ in range(batch_size):
    lengths = rng.integers(image_tokens + 2, seq_len // docs_per_row + 1, size=docs_per_row)
    rows.append([random_document(rng, vocab, int(n), int(rng.integers(0, 2)), image_tokens) for n in lengths])
  return pack_rows(rows, seq_len, vocab)
