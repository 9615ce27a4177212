"""The embedded dataset: `prepare` builds all document kinds in the unified vocabulary, once per config."""
import os

import grain
import numpy as np
import pytest

from unimodal_jax import config as config_lib
from unimodal_jax.data import documents
from unimodal_jax.data import embedded
from unimodal_jax.data import packing
from unimodal_jax.data import tokenizer as tokenizer_lib
from unimodal_jax.data import vocab as vocab_lib


def small_config():
  c = config_lib.default_config()
  c.vocab.text_size = 512
  c.vq.image_size, c.vq.patch_size, c.vq.num_codes = 32, 8, 64
  return c


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
  data_dir = str(tmp_path_factory.mktemp("embedded"))
  return data_dir, embedded.prepare(small_config(), data_dir)


@pytest.fixture(scope="module")
def docs(prepared):
  paths = prepared[1]
  return [documents.decode_document(r) for p in paths for r in grain.sources.ArrayRecordDataSource([p])]


def test_prepare_writes_every_document_kind(prepared, docs):
  _, paths = prepared
  assert len(paths) == embedded.NUM_SHARDS and all(os.path.exists(p) for p in paths)
  assert {d.kind for d in docs} == set(embedded.KINDS)
  counts = {k: sum(d.kind == k for d in docs) for k in embedded.KINDS}
  assert counts["text"] == len(embedded.texts())
  assert counts["image_text_pair"] == 4 * len(embedded.IMAGES)


def test_documents_pass_the_reader_checks_and_render_in_the_unified_vocab(docs):
  c = small_config()
  vocab, grid = vocab_lib.from_config(c), 32 // 8
  for d in docs:
    documents.check_document(d, vocab, grid, c.data.max_document_tokens, "embedded")
    t = documents.render(d.segments, vocab)
    assert t[0] == vocab_lib.BOS_ID and t[-1] == vocab_lib.EOS_ID and np.sum(t == vocab_lib.BOS_ID) == 1
    spans = packing.image_spans(t, vocab)
    assert np.all(spans[:, 1] - spans[:, 0] - 1 == grid * grid)
    assert np.sum(vocab.is_image(t)) == grid * grid * len(spans)
    assert len(spans) == {"text": 0, "image_text_pair": 1, "interleaved": embedded.IMAGES_PER_INTERLEAVED}[d.kind]


def test_saved_tokenizers_decode_an_image_text_pair(prepared, docs):
  vocab = vocab_lib.from_config(small_config())
  text_tok, image_tok = embedded.load_tokenizers(prepared[0], vocab)
  text, codes = next(d.segments for d in docs if d.kind == "image_text_pair")
  assert text_tok.decode(text) in {caption for _, _, caption in embedded.IMAGES}
  assert image_tok.decode(codes[None]).shape == (1, 32, 32, 3)


def test_text_tokenizer_round_trips_text(prepared):
  text_tok, _ = embedded.load_tokenizers(prepared[0])
  for text in (embedded.texts()[0], "Ünïcode, tabs\tand <bos> spelled out.\n"):
    ids = text_tok.encode(text)
    assert ids.dtype == np.int32 and ids.max() < text_tok.size <= 512
    assert text_tok.decode(ids) == text
  assert vocab_lib.BOS_ID not in text_tok.encode("<bos>")


def test_a_tokenizer_larger_than_vocab_text_size_is_an_error(prepared):
  path = os.path.join(prepared[0], embedded.TOKENIZER_FILE)
  with pytest.raises(ValueError, match="vocab.text_size=300"):
    tokenizer_lib.TextTokenizer.load(path, vocab_lib.Vocab(text_size=300, num_image_codes=64))
  with pytest.raises(ValueError, match="vocab.text_size=100"):
    tokenizer_lib.TextTokenizer.train(["some text"], vocab_size=100)


def test_a_second_prepare_is_a_no_op(prepared):
  data_dir, paths = prepared
  mtimes = {n: os.stat(os.path.join(data_dir, n)).st_mtime_ns for n in os.listdir(data_dir)}
  assert embedded.prepare(small_config(), data_dir) == paths
  assert {n: os.stat(os.path.join(data_dir, n)).st_mtime_ns for n in os.listdir(data_dir)} == mtimes


def test_a_changed_config_rebuilds(tmp_path):
  c = small_config()
  c.vq.num_codes = 32
  data_dir = str(tmp_path)
  embedded.prepare(c, data_dir)
  c.vq.num_codes = 48
  embedded.prepare(c, data_dir)
  _, image_tok = embedded.load_tokenizers(data_dir)
  assert image_tok.num_codes == 48
  assert sorted(os.listdir(data_dir)) == sorted(
      [embedded.MANIFEST, embedded.TOKENIZER_FILE, embedded.CODEBOOK_FILE, *embedded.shard_names()])
