"""Packing invariants as property tests: for any documents, seq_len and batch size, every input token is packed
exactly once, in order, with its document's next token as target, correct segment ids, positions, modality
and loss weights; no image is split and no target crosses a document.

Every text id and image code is drawn once per example, so each packed piece names its document and offset.
"""
import hypothesis
import numpy as np
from hypothesis import strategies as st

from unimodal_jax.data import documents
from unimodal_jax.data import pipeline
from unimodal_jax.data import vocab as vocab_lib

VOCAB = vocab_lib.Vocab(text_size=3 + 4000, num_image_codes=4000)
W_TEXT, W_IMAGE = 1.0, 0.25


@st.composite
def packing_cases(draw):
  """(rendered documents, seq_len, batch_size); every image has text before it, so a piece never starts at
  <bos> followed by an image and always holds a unique id."""
  grid = draw(st.integers(1, 3))
  seq_len = draw(st.integers(grid * grid + 3, 40))
  batch_size = draw(st.integers(1, 4))
  next_text, next_code, docs = 3, 0, []
  for _ in range(draw(st.integers(1, 10))):
    segments = []
    for k in range(draw(st.integers(1, 7))):
      if k % 2:
        segments.append(np.arange(next_code, next_code + grid * grid, dtype=np.int32).reshape(grid, grid))
        next_code += grid * grid
      else:
        n = draw(st.integers(1, 2 * seq_len))
        segments.append(np.arange(next_text, next_text + n, dtype=np.int32))
        next_text += n
    docs.append(documents.render(segments, VOCAB))
  return docs, seq_len, batch_size


def owner(docs):
  """id -> (document, position) for every text id and image code."""
  where = {}
  for d, doc in enumerate(docs):
    for p, t in enumerate(doc):
      if 3 <= t < VOCAB.boi_id or VOCAB.is_image(t):
        where[int(t)] = (d, p)
  return where


def check_row_fields(b, r, seq_len):
  seg, pos = b.segment_ids[r], b.positions[r]
  used = int(np.sum(seg > 0))
  assert np.all(seg[:used] > 0) and np.all(seg[used:] == 0), "padding only at the end of a row"
  assert seg[0] == 1 and np.all(np.diff(seg[:used]) >= 0) and np.all(np.diff(seg[:used]) <= 1)
  for s in range(1, int(seg.max(initial=0)) + 1):
    np.testing.assert_array_equal(pos[seg == s], np.arange(np.sum(seg == s)))
  pad = seg == 0
  for field in ("tokens", "targets", "positions", "modality", "loss_weights"):
    assert np.all(getattr(b, field)[r][pad] == 0), field
  np.testing.assert_array_equal(b.modality[r], VOCAB.is_image(b.tokens[r]).astype(np.int32))
  expected = np.where(VOCAB.is_image(b.targets[r]), W_IMAGE, W_TEXT)
  np.testing.assert_array_equal(b.loss_weights[r][~pad], expected[~pad])


def check_no_split_image(inputs):
  inside = False
  for t in inputs:
    if t == VOCAB.boi_id:
      assert not inside
      inside = True
    elif t == VOCAB.eoi_id:
      assert inside
      inside = False
    else:
      assert bool(VOCAB.is_image(t)) == inside, "image codes outside <boi> ... <eoi>"
  assert not inside, "a piece ends inside an image"


@hypothesis.settings(max_examples=120, deadline=None, derandomize=True)
@hypothesis.given(packing_cases())
def test_packing_places_every_token_once_in_order_with_its_fields(case):
  docs, seq_len, batch_size = case
  where = owner(docs)
  batches = list(pipeline.pack_documents(docs, VOCAB, seq_len, batch_size, loss_weight_text=W_TEXT,
                                         loss_weight_image=W_IMAGE))
  pieces = {d: [] for d in range(len(docs))}
  for i, b in enumerate(batches):
    assert b.shape == (batch_size, seq_len) or (i == len(batches) - 1 and b.shape[0] < batch_size)
    for r in range(b.shape[0]):
      check_row_fields(b, r, seq_len)
      for s in range(1, int(b.segment_ids[r].max(initial=0)) + 1):
        at = b.segment_ids[r] == s
        inputs, targets = b.tokens[r, at], b.targets[r, at]
        k = next(k for k, t in enumerate(np.concatenate([inputs, targets[-1:]])) if int(t) in where)
        d, p = where[int(np.concatenate([inputs, targets[-1:]])[k])]
        start = p - k
        np.testing.assert_array_equal(inputs, docs[d][start:start + len(inputs)])
        np.testing.assert_array_equal(targets, docs[d][start + 1:start + 1 + len(inputs)])  # same document
        check_no_split_image(inputs)
        pieces[d].append((start, start + len(inputs), i))
  for d, spans in pieces.items():
    spans.sort()
    assert [s for s, _, _ in spans] == [0] + [e for _, e, _ in spans[:-1]], f"document {d} not tiled once"
    assert spans[-1][1] == len(docs[d]) - 1, f"document {d} incomplete"
    assert [i for _, _, i in spans] == sorted(i for _, _, i in spans), f"document {d} out of order across batches"
