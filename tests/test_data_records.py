"""Records to documents: bad records (raise names the record, skip counts exactly, fuzzed), task formatting
(pair order ratio, CFG dropout), weighted mixtures, TFDS sources without TensorFlow, and the config keys.

Good documents here use text ids 3.. and 2 x 2 image grids; source A's text ids lie below 100, source B's above.
"""
import os

import flax.serialization
import ml_collections
import msgpack
import numpy as np
import pytest
from array_record.python import array_record_module

from unimodal_jax import config as config_lib
from unimodal_jax.data import documents
from unimodal_jax.data import packing
from unimodal_jax.data import pipeline
from unimodal_jax.data import sources as sources_lib
from unimodal_jax.data import vocab as vocab_lib
from unimodal_jax.train import validate as validate_lib

TEXT_SIZE, NUM_CODES, GRID, MAX_TOKENS = 200, 16, 2, 120
VOCAB = vocab_lib.Vocab(text_size=TEXT_SIZE, num_image_codes=NUM_CODES)


def config(**data):
  c = config_lib.default_config()
  c.vocab.text_size, c.vq.num_codes, c.vq.image_size, c.vq.patch_size = TEXT_SIZE, NUM_CODES, 8 * GRID, 8
  c.model.vocab_size = 256
  c.data.seq_len, c.train.batch_size, c.data.max_document_tokens = 32, 4, MAX_TOKENS
  c.data.source, c.data.dir, c.data.shuffle = "shards", "unused", False
  c.data.update(data)
  return c


def good_doc(rng, low=3, high=100) -> documents.Document:
  text = lambda: rng.integers(low, high, rng.integers(1, 20)).astype(np.int32)  # noqa: E731
  image = lambda: rng.integers(0, NUM_CODES, (GRID, GRID)).astype(np.int32)  # noqa: E731
  kind = rng.choice(["text", "interleaved", "image_text_pair"])
  if kind == "text":
    return documents.Document("text", (text(),))
  if kind == "image_text_pair":
    return documents.Document("image_text_pair", (text(), image()))
  return documents.Document("interleaved", (text(), image(), text(), image()))


def raw(fields) -> bytes:
  return flax.serialization.msgpack_serialize(fields)


def v2(*segments, kind="interleaved") -> bytes:
  return raw({"version": 2, "kind": kind, "segments": list(segments)})


def text(*ids):
  return {"text": np.array(ids, np.int32)}


def image(shape=(GRID, GRID), value=0):
  return {"image": np.full(shape, value, np.int32)}


def negative_dimension_record() -> bytes:
  """A text segment stored with shape (-1,): numpy alone would read it as 3 ids."""
  array = msgpack.ExtType(1, msgpack.packb([[-1], "int32", np.arange(3, 6, dtype=np.int32).tobytes()]))
  return msgpack.packb({"version": 2, "kind": "text", "segments": [{"text": array}]})


BAD_RECORDS = {  # name -> (maker(rng, good record bytes), expected message)
    "random bytes": (lambda rng, g: rng.bytes(int(rng.integers(0, 64))), ""),
    "truncated": (lambda rng, g: g[:int(rng.integers(0, len(g) - 1))], ""),
    "not a dict": (lambda rng, g: raw([1, 2, 3]), "is a map"),
    "float version": (lambda rng, g: raw({"version": 2.0, "kind": "text", "segments": [text(5)]}), "got float 2.0"),
    "array version": (lambda rng, g: raw({"version": np.array([2]), "kind": "text", "segments": [text(5)]}),
                      "must be the integer 2"),
    "negative dimension": (lambda rng, g: negative_dimension_record(), "non-negative"),
    "version 1": (lambda rng, g: raw({"version": 1, "kind": "text", "tokens": np.arange(3, 9, dtype=np.int32)}),
                  "version 1"),
    "version 3": (lambda rng, g: raw({"version": 3, "kind": "text", "segments": []}), "version 3"),
    "unknown kind": (lambda rng, g: v2(text(5), kind="video"), "kind 'video'"),
    "segment not a dict": (lambda rng, g: v2([5, 6]), "segment 0 must be"),
    "float text": (lambda rng, g: v2({"text": np.ones(3, np.float32)}), r"segment 0 \(text\) must be int32"),
    "1-D image": (lambda rng, g: v2(text(5), {"image": np.zeros(4, np.int32)}), r"segment 1 \(image\) must be"),
    "text id too large": (lambda rng, g: v2(text(5, TEXT_SIZE + int(rng.integers(0, 99)))), "outside"),
    "special id in text": (lambda rng, g: v2(text(5, int(rng.integers(0, 3)))), r"outside \[3, 200\)"),
    "negative code": (lambda rng, g: v2(text(5), image(value=-1)), "outside"),
    "code too large": (lambda rng, g: v2(text(5), image(value=NUM_CODES)), "vq.num_codes=16"),
    "wrong-size image": (lambda rng, g: v2(text(5), image((GRID + 1, GRID))), "3 x 2 codes, expected 2 x 2"),
    "empty document": (lambda rng, g: v2(), "empty document"),
    "empty segment": (lambda rng, g: v2(text(5), text()), "segment 1 is empty"),
    "huge document": (lambda rng, g: v2({"text": np.full(MAX_TOKENS, 7, np.int32)}), "data.max_document_tokens=120"),
    "pair of two texts": (lambda rng, g: v2(text(5), text(6), kind="image_text_pair"), "one text and one image"),
}


def write(path, records):
  writer = array_record_module.ArrayRecordWriter(path, config_lib.ARRAY_RECORD_WRITER_OPTIONS)
  for r in records:
    writer.write(r)
  writer.close()


@pytest.mark.parametrize("name", sorted(BAD_RECORDS))
def test_every_refused_record_is_refused_by_the_decoder_or_the_check(name):
  rng = np.random.default_rng(0)
  record = BAD_RECORDS[name][0](rng, documents.encode_document(good_doc(rng)))
  with pytest.raises(ValueError, match=f"^shard record 7: .*{BAD_RECORDS[name][1]}"):
    doc = documents.decode_document(record, "shard record 7")
    documents.check_document(doc, VOCAB, GRID, MAX_TOKENS, "shard record 7")


@pytest.mark.parametrize("name", ["truncated", "version 1", "text id too large", "wrong-size image",
                                  "empty document", "huge document"])
def test_raise_mode_names_the_file_and_record(tmp_path, name):
  rng = np.random.default_rng(0)
  good = documents.encode_document(good_doc(rng))
  path = str(tmp_path / "shard.array_record")
  write(path, [good, BAD_RECORDS[name][0](rng, good), good])
  with pytest.raises(ValueError, match=f"{path} record 1: .*{BAD_RECORDS[name][1]}"):
    next(iter(pipeline.make_dataset(config(), [path])))


def test_skip_mode_survives_1000_fuzzed_bad_records_and_counts_them(tmp_path):
  rng = np.random.default_rng(1)
  names = sorted(BAD_RECORDS)
  records, bad, good_tokens = [], [], 0
  c = config(on_bad_record="skip")
  for i in range(1500):
    doc = good_doc(rng)
    record = documents.encode_document(doc)
    if rng.random() < 0.8:
      record = BAD_RECORDS[names[i % len(names)]][0](rng, record)
      bad.append(i)
    else:
      good_tokens += len(documents.render(doc.segments, VOCAB)) - 1
    records.append(record)
  paths = [str(tmp_path / "a.array_record"), str(tmp_path / "b.array_record")]
  write(paths[0], records[:700])
  write(paths[1], records[700:])
  assert len(bad) >= 1000

  docs = pipeline.documents_dataset(c, sources_lib.from_config(c, paths), num_epochs=1)
  skipped = [i for i in range(len(docs)) if isinstance(docs[i], packing.Skipped)]
  assert skipped == bad
  assert docs[bad[0]].where == f"{paths[bad[0] >= 700]} record {bad[0] - 700 * (bad[0] >= 700)}"
  packed = pipeline.CountBadRecords(packing.PackIterDataset(docs.to_iter_dataset(), pipeline.pack_spec(c, 4),
                                                            drop_remainder=False))
  it = iter(packed)
  tokens = sum(b.num_tokens() for b in it)
  assert it.bad_records == len(bad) and tokens == good_tokens


def test_the_bad_record_count_resumes_with_the_iterator(tmp_path):
  rng = np.random.default_rng(2)
  records = [documents.encode_document(good_doc(rng)) if i % 3 else b"garbage" for i in range(300)]
  path = str(tmp_path / "s.array_record")
  write(path, records)
  ds = pipeline.make_dataset(config(on_bad_record="skip"), [path])
  it = iter(ds)
  for _ in range(10):
    next(it)
  state, count = it.get_state(), it.bad_records
  assert count > 0
  expected = [next(it) for _ in range(5)]
  resumed = iter(ds)
  resumed.set_state(state)
  assert resumed.bad_records == count
  got = [next(resumed) for _ in range(5)]
  assert all(np.array_equal(a.tokens, b.tokens) for a, b in zip(expected, got))
  assert resumed.bad_records == it.bad_records


def test_image_text_pairs_follow_the_order_ratio_and_cfg_dropout(tmp_path):
  n, ratio, dropout = 4000, 0.7, 0.2
  rng = np.random.default_rng(3)
  path = str(tmp_path / "pairs.array_record")
  documents.write_shards([documents.Document("image_text_pair", (rng.integers(3, 100, 5).astype(np.int32),
                                                                  np.zeros((GRID, GRID), np.int32)))
                          for _ in range(n)], [path])
  c = config(caption_first_ratio=ratio, cfg_dropout=dropout)
  docs = pipeline.documents_dataset(c, sources_lib.from_config(c, [path]), num_epochs=1)
  forms = {"caption_first": 0, "null_condition": 0, "image_first": 0}
  for i in range(n):
    d = docs[i]
    if len(d) == 2 + 2 + GRID * GRID:
      forms["null_condition"] += 1
      assert d[1] == VOCAB.boi_id
    else:
      forms["caption_first" if d[1] != VOCAB.boi_id else "image_first"] += 1
  expected = {"caption_first": ratio * (1 - dropout), "null_condition": ratio * dropout, "image_first": 1 - ratio}
  for form, p in expected.items():
    assert abs(forms[form] / n - p) < 4 * np.sqrt(p * (1 - p) / n), (form, forms)
  again = pipeline.documents_dataset(c, sources_lib.from_config(c, [path]), num_epochs=1)
  assert all(np.array_equal(docs[i], again[i]) for i in range(50)), "formatting is deterministic per record"


@pytest.fixture(scope="module")
def mixture_paths(tmp_path_factory):
  d = tmp_path_factory.mktemp("mixture")
  rng = np.random.default_rng(4)
  for name, low, high in (("a", 3, 100), ("b", 100, 200)):
    documents.write_shards([good_doc(rng, low, high) for _ in range(200)],
                           [str(d / f"{name}-{i}.array_record") for i in range(2)])
  return {"a": str(d / "a-*.array_record"), "b": str(d / "b-*.array_record")}


def mixture_config(paths, **sources):
  c = config(shuffle=True)
  c.data.source = "mixture"
  for name, (kind, path, weight) in sources.items():
    c.data.sources[name] = ml_collections.ConfigDict(dict(kind=kind, path=path, weight=weight, split="train"))
  return c


def source_of(tokens: np.ndarray) -> str:
  text = tokens[(tokens >= 3) & (tokens < TEXT_SIZE)]
  return "a" if text[0] < 100 else "b"


def test_a_mixture_draws_records_in_proportion_to_the_weights(mixture_paths):
  c = mixture_config(mixture_paths, a=("shards", mixture_paths["a"], 3.0), b=("shards", mixture_paths["b"], 1.0))
  validate_lib.validate(c, num_devices=1)
  docs = pipeline.documents_dataset(c, sources_lib.from_config(c))
  n = 2000
  share = np.mean([source_of(docs[i]) == "a" for i in range(n)])
  assert abs(share - 0.75) < 4 * np.sqrt(0.75 * 0.25 / n)
  batches = [next(iter(pipeline.make_dataset(c))) for _ in range(2)]
  np.testing.assert_array_equal(batches[0].tokens, batches[1].tokens)


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
  tfds = pytest.importorskip("tensorflow_datasets", reason="the tfds extra is not installed")

  class VqPairs(tfds.core.GeneratorBasedBuilder):
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
      return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
          "caption": tfds.features.Tensor(shape=(None,), dtype=np.int32),
          "codes": tfds.features.Tensor(shape=(GRID, GRID), dtype=np.int32)}))

    def _split_generators(self, dl_manager):
      return {"train": self._generate_examples()}

    def _generate_examples(self):
      for i in range(40):
        yield i, {"caption": np.full(3, 150 + i, np.int32), "codes": np.full((GRID, GRID), i % NUM_CODES, np.int32)}

  builder = VqPairs(data_dir=str(tmp_path_factory.mktemp("tfds")), file_format="array_record")
  builder.download_and_prepare()
  return builder.data_dir


def test_a_tfds_array_record_dataset_mixes_with_shards_without_tensorflow(mixture_paths, tfds_dir):
  c = mixture_config(mixture_paths, a=("shards", mixture_paths["a"], 1.0), pairs=("tfds", tfds_dir, 1.0))
  c.data.sources.pairs.text_feature, c.data.sources.pairs.image_feature = "caption", "codes"
  validate_lib.validate(c, num_devices=1)
  docs = pipeline.documents_dataset(c, sources_lib.from_config(c))
  pairs = [docs[i] for i in range(200) if source_of(docs[i]) == "b"]
  assert 80 <= len(pairs) <= 120
  for d in pairs:
    i = d[(d >= 150) & (d < TEXT_SIZE)][0] - 150
    assert np.sum(d == 150 + i) == 3 and np.all(VOCAB.code_of(d[VOCAB.is_image(d)]) == i % NUM_CODES)
  assert next(iter(pipeline.make_dataset(c))).shape == (4, 32)


@pytest.mark.parametrize("key, value, message", [
    ("data.on_bad_record", "ignore", "config.data.on_bad_record: 'ignore' is not one of"),
    ("data.cfg_dropout", 1.5, r"config.data.cfg_dropout: must be in \[0, 1\]"),
    ("data.source", "mixture", "config.data.sources: data.source='mixture' needs named sources"),
])
def test_data_config_errors_name_the_key(key, value, message):
  c = config()
  section, name = key.split(".")
  c[section][name] = value
  with pytest.raises(config_lib.ConfigError, match=message):
    validate_lib.validate(c, num_devices=1)


def test_a_source_entry_error_names_its_key():
  c = mixture_config({}, web=("shards", "/data/web/*.array_record", 0.0))
  with pytest.raises(config_lib.ConfigError, match=r"config.data.sources.web.weight: must be > 0"):
    validate_lib.validate(c, num_devices=1)


def test_an_unreadable_array_record_file_is_named(tmp_path):
  rng = np.random.default_rng(4)
  good, broken = str(tmp_path / "a.array_record"), str(tmp_path / "b.array_record")
  write(good, [documents.encode_document(good_doc(rng)) for _ in range(5)])
  write(broken, [documents.encode_document(good_doc(rng)) for _ in range(5)])
  with open(broken, "r+b") as f:
    f.truncate(os.path.getsize(broken) // 2)
  with pytest.raises(ValueError, match=f"{broken}: not a readable ArrayRecord file"):
    pipeline.make_dataset(config(), [good, broken])


def test_unreadable_tokenizer_files_are_named(tmp_path):
  from unimodal_jax.data import tokenizer as tokenizer_lib
  from unimodal_jax.vq import weights
  bad = tmp_path / "tokenizer.json"
  bad.write_text("{not json")
  with pytest.raises(ValueError, match=f"{bad}: not a readable text tokenizer"):
    tokenizer_lib.TextTokenizer.load(str(bad))
  (tmp_path / "vq").mkdir()
  (tmp_path / "vq" / "config.json").write_text("[1, 2")
  with pytest.raises(ValueError, match=f"{tmp_path / 'vq' / 'config.json'}: not a readable VQGAN tokenizer config"):
    weights.load_tokenizer(str(tmp_path / "vq"))
