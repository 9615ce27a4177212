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
from unimodal_jax.train import validate as validate_lib

NUM_DOCS, TEXT_PER_DOC, GRID = 48, 40, 2
VOCAB = vocab_lib.Vocab(text_size=3 + NUM_DOCS * TEXT_PER_DOC, num_image_codes=16)
SEQ_LEN, BATCH = 16, 4


def make_doc(i: int, rng: np.random.Generator) -> documents.Document:
  """Text (image text)*; every image has text on both sides."""
  text = 3 + TEXT_PER_DOC * i + np.arange(rng.integers(2, TEXT_PER_DOC + 1), dtype=np.int32)
  num_images = int(rng.integers(0, min(4, len(text))))
  cuts = np.sort(rng.choice(np.arange(1, len(text)), size=num_images, replace=False))
  segments = []
  for chunk, image in zip(np.split(text, cuts), range(num_images + 1)):
    segments.append(chunk)
    if image < num_images:
      segments.append(rng.integers(0, 16, (GRID, GRID)).astype(np.int32))
  return documents.Document("interleaved" if num_images else "text", tuple(segments))


RECORDS = [make_doc(i, np.random.default_rng(i)) for i in range(NUM_DOCS)]
DOCS = [documents.render(d.segments, VOCAB) for d in RECORDS]


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
  c.vq.image_size, c.vq.patch_size = 8 * GRID, 8
  c.model.vocab_size = 2048
  c.data.seq_len, c.train.batch_size = SEQ_LEN, BATCH
  c.data.source, c.data.dir = "shards", "unused: make_dataset gets the paths"
  c.data.update(data)
  return c


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
  paths = [str(tmp_path_factory.mktemp("shards") / f"train-{i}.array_record") for i in range(3)]
  documents.write_shards(RECORDS, paths)
  return paths


def take(ds, n):
  it = iter(ds)
  return [next(it) for _ in range(n)]


def assert_batches_equal(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    for field in batch_lib.FIELDS:
      np.testing.assert_array_equal(getattr(x, field), getattr(y, field), err_msg=field)


def test_a_document_round_trips_through_its_record():
  for doc in RECORDS[:5]:
    back = documents.decode_document(documents.encode_document(doc))
    assert back.kind == doc.kind and len(back.segments) == len(doc.segments)
    for a, b in zip(back.segments, doc.segments):
      np.testing.assert_array_equal(a, b)
      assert a.dtype == np.int32 and a.shape == b.shape


def test_render_frames_the_document_and_offsets_image_codes():
  text, image = np.array([5, 6], np.int32), np.array([[0, 1], [2, 3]], np.int32)
  got = documents.render((text, image, text), VOCAB)
  o = VOCAB.image_code_offset
  np.testing.assert_array_equal(got, [1, 5, 6, VOCAB.boi_id, o, o + 1, o + 2, o + 3, VOCAB.eoi_id, 5, 6, 2])


def test_batches_have_the_packed_batch_shapes_and_dtypes():
  batches = list(pipeline.pack_documents(DOCS, VOCAB, SEQ_LEN, BATCH))
  for b in batches[:-1]:
    for field, dtype in batch_lib.dtypes().items():
      assert getattr(b, field).shape == (BATCH, SEQ_LEN) and getattr(b, field).dtype == dtype, field
  assert 1 <= batches[-1].shape[0] <= BATCH


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


def test_a_long_document_is_cut_only_between_images():
  doc = np.concatenate([DOCS[i][1:-1] for i in range(6)])
  doc = np.concatenate([[vocab_lib.BOS_ID], doc, [vocab_lib.EOS_ID]]).astype(np.int32)
  bounds = packing.piece_bounds(doc, VOCAB, SEQ_LEN)
  assert len(bounds) > 3 and all(1 <= end - start <= SEQ_LEN for start, end in bounds)
  assert [s for s, _ in bounds] == [0] + [e for _, e in bounds[:-1]] and bounds[-1][1] == len(doc) - 1
  for start, _ in bounds[1:]:
    assert not VOCAB.is_image(doc[start]) and doc[start] != VOCAB.eoi_id, "a cut inside an image"


def test_an_image_longer_than_seq_len_raises_naming_data_seq_len():
  doc = DOCS[next(i for i, d in enumerate(DOCS) if VOCAB.boi_id in d)]
  with pytest.raises(ValueError, match=r"image of 6 tokens .* data\.seq_len=5"):
    list(pipeline.pack_documents([doc] * 3, VOCAB, seq_len=5, batch_size=2))


def test_a_seq_len_shorter_than_an_image_is_a_config_error():
  with pytest.raises(config_lib.ConfigError, match=r"config\.data\.seq_len: 5 cannot hold one image of 6 tokens"):
    validate_lib.validate(small_config(seq_len=5), num_devices=1)


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


def test_processes_read_disjoint_records_that_cover_the_epoch(shards):
  seen = []
  for index in range(3):
    c = small_config()
    c.train.batch_size = 3
    batches = take(pipeline.make_dataset(c, shards, process_index=index, process_count=3), 120)
    seen.append({locate(i, t)[0] for b in batches for i, t in segments(b)})
  assert not (seen[0] & seen[1] or seen[0] & seen[2] or seen[1] & seen[2])
  assert seen[0] | seen[1] | seen[2] == set(range(NUM_DOCS))


@pytest.mark.parametrize("read_threads", [0, 2])
def test_an_iterator_resumes_from_its_state(shards, read_threads):
  ds = pipeline.make_dataset(small_config(read_threads=read_threads), shards)
  it = iter(ds)
  for _ in range(7):
    next(it)
  state = it.get_state()
  expected = [next(it) for _ in range(5)]
  resumed = iter(ds)
  resumed.set_state(state)
  assert_batches_equal(expected, [next(resumed) for _ in range(5)])


def test_every_state_of_a_short_run_restores_the_same_batches(shards):
  ds = grain.experimental.LimitIterDataset(pipeline.make_dataset(small_config(), shards), count=8)
  grain.experimental.assert_equal_output_after_checkpoint(ds.map(dataclasses.asdict))


def test_worker_processes_resume_exactly_through_an_orbax_checkpoint(shards, tmp_path):
  """Saved and restored as train/checkpoint.py does (orbax, grain.checkpoint), with 2 workers and skipped
  records counted."""
  import orbax.checkpoint as ocp

  garbage = str(tmp_path / "garbage.array_record")
  writer = array_record_module.ArrayRecordWriter(garbage, config_lib.ARRAY_RECORD_WRITER_OPTIONS)
  for i in range(10):
    writer.write(b"not a record %d" % i)
  writer.close()
  c = small_config(worker_count=2, on_bad_record="skip")
  ds = pipeline.make_dataset(c, [*shards, garbage])
  first = iter(ds)
  for _ in range(6):
    next(first)
  with ocp.CheckpointManager(str(tmp_path / "checkpoints")) as manager:
    manager.save(6, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(first)))
  expected, count = [next(first) for _ in range(4)], first.bad_records
  resumed = iter(ds)
  with ocp.CheckpointManager(str(tmp_path / "checkpoints")) as manager:
    manager.restore(6, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(resumed)))
  assert_batches_equal(expected, [next(resumed) for _ in range(4)])
  assert resumed.bad_records == count > 0
  first.close()
  resumed.close()


def test_a_version_1_record_is_rejected_with_how_to_rewrite_it(tmp_path):
  path = str(tmp_path / "old.array_record")
  writer = array_record_module.ArrayRecordWriter(path, config_lib.ARRAY_RECORD_WRITER_OPTIONS)
  writer.write(flax.serialization.msgpack_serialize({"version": 1, "kind": "text", "tokens": DOCS[0]}))
  writer.close()
  with pytest.raises(ValueError, match=f"{path} record 0: document format version 1 .*unimodal-make-shards"):
    next(iter(pipeline.make_dataset(small_config(), [path])))


def test_one_process_serving_two_data_shards_yields_the_two_process_global_batch(shards):
  """data.num_shards fixes the batches: 1 process x 2 shards == rows of process 0 then process 1 of 2."""
  one = take(pipeline.make_dataset(small_config(num_shards=2), shards), 4)
  halves = [take(pipeline.make_dataset(small_config(), shards, process_index=i, process_count=2), 4) for i in (0, 1)]
  expected = [batch_lib.PackedBatch(**{f: np.concatenate([getattr(a, f), getattr(b, f)]) for f in batch_lib.FIELDS})
              for a, b in zip(*halves)]
  assert_batches_equal(one, expected)


def test_a_multi_shard_iterator_resumes_from_its_state(shards):
  ds = grain.experimental.LimitIterDataset(pipeline.make_dataset(small_config(num_shards=2), shards), count=6)
  grain.experimental.assert_equal_output_after_checkpoint(ds.map(dataclasses.asdict))


def test_data_num_shards_must_be_a_multiple_of_the_processes():
  with pytest.raises(config_lib.ConfigError, match="config.data.num_shards: 3"):
    validate_lib.validate(small_config(num_shards=3), num_devices=2, process_count=2)


@pytest.mark.parametrize("kind", ["text", "interleaved"])
def test_document_kinds_keeps_only_that_kind_and_every_document_of_it(shards, kind):
  kept = {i for i, d in enumerate(RECORDS) if d.kind == kind}
  assert 0 < len(kept) < NUM_DOCS
  batches = take(pipeline.make_dataset(small_config(document_kinds=kind), shards), 60)
  seen = {locate(i, t)[0] for b in batches for i, t in segments(b)}
  assert seen == kept
  has_images = any(VOCAB.is_image(b.tokens).any() for b in batches)
  assert has_images == (kind == "interleaved")


def test_a_filtered_stream_resumes_from_every_state(shards):
  ds = grain.experimental.LimitIterDataset(pipeline.make_dataset(small_config(document_kinds="text"), shards), count=8)
  grain.experimental.assert_equal_output_after_checkpoint(ds.map(dataclasses.asdict))


def test_document_kinds_that_the_sources_lack_raise_naming_the_key(shards):
  with pytest.raises(ValueError, match=r"data\.document_kinds: 48 records in a row were of other kinds"):
    take(pipeline.make_dataset(small_config(document_kinds="image_text_pair"), shards), 1)


@pytest.mark.parametrize("value", ["txt", "text,text", "text, images"])
def test_unknown_or_repeated_document_kinds_are_config_errors(value):
  with pytest.raises(config_lib.ConfigError, match=r"config\.data\.document_kinds"):
    validate_lib.validate(small_config(document_kinds=value), num_devices=1)


def test_image_only_pairs_render_as_unconditional_images(tmp_path):
  """The image-only recipe of docs/scaling.md: pairs kept, caption first, caption always dropped."""
  rng = np.random.default_rng(0)
  pairs = [documents.Document("image_text_pair", (3 + np.arange(5, dtype=np.int32) + 40 * i,
                                                  rng.integers(0, 16, (GRID, GRID)).astype(np.int32)))
           for i in range(6)]
  path = str(tmp_path / "pairs.array_record")
  documents.write_shards(RECORDS[:6] + pairs, [path])
  c = small_config(document_kinds="image_text_pair", caption_first_ratio=1.0, cfg_dropout=1.0)
  batches = take(pipeline.make_dataset(c, [path]), 6)
  pieces = [(i, t) for b in batches for i, t in segments(b)]
  assert pieces
  for inputs, targets in pieces:
    assert inputs[0] == vocab_lib.BOS_ID and inputs[1] == VOCAB.boi_id and targets[-1] == vocab_lib.EOS_ID
    assert VOCAB.is_image(inputs[2:-1]).all() and inputs[-1] == VOCAB.eoi_id and len(inputs) == GRID * GRID + 3
