"""Packing and the Grain pipeline: every packed token's target is its document's next token, images stay whole,
padding is inert, and the stream is deterministic, disjoint across processes and resumable.

Synthetic documents make each piece traceable: document i spells its text with the ids 3 + 40*i + (0, 1, ...),
so any text id names its document and its position in it.
"""
import dataclasses

import flax.serialization
import grain
import numpy as np
import pytest
from array_record.python import array_record_module

from unimodal_jax import config as config_lib
from unimodal_jax.data import batch as batch_lib
from unimodal_jax.data import documents
from unimodal_jax.data import packing
from unimodal_jax.data import pipeline
from unimodal_jax.data import vocab as vocab_lib

NUM_DOCS, TEXT_PER_DOC, CODES_PER_IMAGE = 48, 40, 4
VOCAB = vocab_lib.Vocab(text_size=3 + NUM_DOCS * TEXT_PER_DOC, num_image_codes=16)
SEQ_LEN, BATCH = 16, 4


def make_doc(i: int, rng: np.random.Generator) -> np.ndarray:
  """<bos> text (image text)* <eos>; every image has text on both sides."""
  text = 3 + TEXT_PER_DOC * i + np.arange(rng.integers(2, TEXT_PER_DOC + 1))
  num_images = int(rng.integers(0, min(4, len(text))))
  cuts = np.sort(rng.choice(np.arange(1, len(text)), size=num_images, replace=False))
  parts = [[vocab_lib.BOS_ID]]
  for chunk, image in zip(np.split(text, cuts), range(num_images + 1)):
    parts.append(chunk)
    if image < num_images:
      parts.append(VOCAB.image_tokens(rng.integers(0, 16, CODES_PER_IMAGE)))
  parts.append([vocab_lib.EOS_ID])
  return np.concatenate(parts).astype(np.int32)


DOCS = [make_doc(i, np.random.default_rng(i)) for i in range(NUM_DOCS)]


def doc_of(text_id: int) -> int:
  return (text_id - 3) // TEXT_PER_DOC


def segments(batch: batch_lib.PackedBatch):
  """(inputs, targets) of every packed piece, row by row."""
  for r in range(batch.shape[0]):
    for s in range(1, batch.segment_ids[r].max() + 1):
      at = batch.segment_ids[r] == s
      yield batch.tokens[r, at], batch.targets[r, at]


def locate(inputs, targets):
  """(document index, offset in it) of a piece, found through its first document-specific text id."""
  ids = np.concatenate([inputs, targets[-1:]])
  k = int(np.flatnonzero((ids >= 3) & (ids < VOCAB.text_size))[0])
  doc = doc_of(ids[k])
  return doc, int(np.flatnonzero(DOCS[doc] == ids[k])[0]) - k


def small_config(**data):
  c = config_lib.default_config()
  c.vocab.text_size, c.vq.num_codes = VOCAB.text_size, VOCAB.num_image_codes
  c.data.seq_len, c.train.batch_size = SEQ_LEN, BATCH
  c.data.update(data)
  return c


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
  paths = [str(tmp_path_factory.mktemp("shards") / f"train-{i}.array_record") for i in range(3)]
  documents.write_shards([documents.Document("synthetic", d) for d in DOCS], paths)
  return paths


def take(ds, n):
  it = iter(ds)
  return [next(it) for _ in range(n)]


def assert_batches_equal(a, b):
  for x, y in zip(a, b):
    for field in batch_lib.FIELDS:
      np.testing.assert_array_equal(getattr(x, field), getattr(y, field), err_msg=field)


def test_batches_have_the_packed_batch_shapes_and_dtypes():
  batches = list(pipeline.pack_documents(DOCS, VOCAB, SEQ_LEN, BATCH))
  for b in batches[:-1]:
    for field, dtype in batch_lib.dtypes().items():
      assert getattr(b, field).shape == (BATCH, SEQ_LEN) and getattr(b, field).dtype == dtype, field
  assert 1 <= batches[-1].shape[0] <= BATCH


def test_segment_ids_count_up_and_positions_restart_in_each_piece():
  for b in pipeline.pack_documents(DOCS, VOCAB, SEQ_LEN, BATCH):
    for seg, pos in zip(b.segment_ids, b.positions):
      used = seg[seg > 0]
      assert np.all(seg[len(used):] == 0), "padding only at the end of a row"
      np.testing.assert_array_equal(np.unique(used), np.arange(1, used.max() + 1))
      assert np.all(np.diff(used) >= 0)
      for s in range(1, used.max() + 1):
        np.testing.assert_array_equal(pos[seg == s], np.arange(np.sum(seg == s)))
      assert np.all(pos[seg == 0] == 0)


def test_pieces_are_shifted_slices_that_tile_each_document():
  offsets = {i: [] for i in range(NUM_DOCS)}
  for b in pipeline.pack_documents(DOCS, VOCAB, SEQ_LEN, BATCH):
    for inputs, targets in segments(b):
      doc, start = locate(inputs, targets)
      np.testing.assert_array_equal(inputs, DOCS[doc][start:start + len(inputs)])
      np.testing.assert_array_equal(targets, DOCS[doc][start + 1:start + 1 + len(inputs)])
      offsets[doc].append((start, start + len(inputs)))
  for doc, spans in offsets.items():
    spans.sort()
    ends = [0] + [end for _, end in spans]
    assert [start for start, _ in spans] == ends[:-1] and ends[-1] == len(DOCS[doc]) - 1, doc


def test_padding_is_inert_and_weights_follow_the_target_modality():
  for b in pipeline.pack_documents(DOCS, VOCAB, SEQ_LEN, BATCH, loss_weight_text=1.0, loss_weight_image=0.5):
    pad = b.segment_ids == 0
    for field in ("tokens", "targets", "positions", "modality", "loss_weights"):
      assert np.all(getattr(b, field)[pad] == 0), field
    expected = np.where(VOCAB.is_image(b.targets), 0.5, 1.0)
    np.testing.assert_array_equal(b.loss_weights[~pad], expected[~pad])
    np.testing.assert_array_equal(b.modality, VOCAB.is_image(b.tokens).astype(np.int32))


def test_every_image_opens_and_closes_inside_one_piece():
  for b in pipeline.pack_documents(DOCS, VOCAB, SEQ_LEN, BATCH):
    for inputs, _ in segments(b):
      open_image = False
      for t in inputs:
        if t == VOCAB.boi_id:
          assert not open_image
          open_image = True
        elif t == VOCAB.eoi_id:
          assert open_image
          open_image = False
        else:
          assert VOCAB.is_image(t) == open_image
      assert not open_image


def test_a_long_document_is_cut_only_between_images():
  doc = np.concatenate([DOCS[i][1:-1] for i in range(6)])
  doc = np.concatenate([[vocab_lib.BOS_ID], doc, [vocab_lib.EOS_ID]]).astype(np.int32)
  pieces = packing.split_document(doc, VOCAB, SEQ_LEN)
  assert len(pieces) > 3 and all(1 <= len(p) <= SEQ_LEN for p in pieces)
  np.testing.assert_array_equal(np.concatenate(pieces), np.stack([doc[:-1], doc[1:]], axis=1))
  for p in pieces[1:]:
    first = p[0, 0]
    assert not VOCAB.is_image(first) and first != VOCAB.eoi_id, "a cut inside an image"


def test_an_image_longer_than_seq_len_raises_naming_data_seq_len():
  doc = DOCS[next(i for i, d in enumerate(DOCS) if VOCAB.boi_id in d)]
  with pytest.raises(ValueError, match=r"image of 6 tokens .* data\.seq_len=5"):
    list(pipeline.pack_documents([doc] * 3, VOCAB, seq_len=5, batch_size=2))


def test_make_dataset_yields_per_process_batches(shards):
  b = take(pipeline.make_dataset(small_config(), shards, process_index=1, process_count=2), 1)[0]
  assert b.shape == (BATCH // 2, SEQ_LEN)


def test_make_dataset_is_deterministic_for_a_seed(shards):
  a = take(pipeline.make_dataset(small_config(), shards), 6)
  assert_batches_equal(a, take(pipeline.make_dataset(small_config(), shards), 6))
  c = small_config()
  c.seed = 1
  other = take(pipeline.make_dataset(c, shards), 6)
  assert not all(np.array_equal(x.tokens, y.tokens) for x, y in zip(a, other))


def test_processes_read_disjoint_records(shards):
  seen = []
  for index in range(2):
    batches = take(pipeline.make_dataset(small_config(), shards, process_index=index, process_count=2), 60)
    seen.append({locate(i, t)[0] for b in batches for i, t in segments(b)})
  assert not seen[0] & seen[1]
  assert seen[0] | seen[1] == set(range(NUM_DOCS))


def test_an_iterator_resumes_from_its_state(shards):
  ds = pipeline.make_dataset(small_config(), shards)
  it = iter(ds)
  for _ in range(7):
    next(it)
  state = it.get_state()
  expected = [next(it) for _ in range(5)]
  resumed = iter(ds)
  resumed.set_state(state)
  assert_batches_equal(expected, [next(resumed) for _ in range(5)])


def test_every_state_of_a_short_run_restores_the_same_batches(shards):
  ds = grain.experimental.LimitIterDataset(pipeline.make_dataset(small_config(), shards), count=5)
  grain.experimental.assert_equal_output_after_checkpoint(ds.map(dataclasses.asdict))


def test_worker_processes_give_a_resumable_stream(shards):
  ds = pipeline.make_dataset(small_config(worker_count=2), shards)
  first = iter(ds)
  for _ in range(3):
    next(first)
  state = first.get_state()
  expected = [next(first) for _ in range(3)]
  resumed = iter(ds)
  resumed.set_state(state)
  assert_batches_equal(expected, [next(resumed) for _ in range(3)])
  first.close()
  resumed.close()


@pytest.mark.parametrize("fields, error", [
    ({"version": 2, "kind": "x", "tokens": np.zeros(3, np.int32)}, "document format version 2"),
    ({"version": 1, "kind": "x", "tokens": np.zeros(3, np.int64)}, "tokens must be int32"),
])
def test_a_bad_record_error_names_file_and_record(tmp_path, fields, error):
  path = str(tmp_path / "bad.array_record")
  writer = array_record_module.ArrayRecordWriter(path, "group_size:1")
  writer.write(documents.encode_document(documents.Document("synthetic", DOCS[0])))
  writer.write(flax.serialization.msgpack_serialize(fields))
  writer.close()
  with pytest.raises(ValueError, match=f"{path} record 1: {error}"):
    list(documents.read_documents([path]))
