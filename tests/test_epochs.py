"""Past one epoch: in skip mode each epoch skips exactly the injected bad records and delivers every valid record,
errors name the record (not the index in the repeated stream), pairs are formatted per (record, epoch), and a run
resumed in its second epoch continues exactly; with 0 and 1 worker processes."""
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from array_record.python import array_record_module

from unimodal_jax import config as config_lib
from unimodal_jax.data import documents, packing, pipeline
from unimodal_jax.convert.checkpoint import load_all, read_params
from unimodal_jax.data import sources as sources_lib
from unimodal_jax.train.metrics import read_metrics

TEXT_SIZE, NUM_CODES, GRID = 200, 16, 2


def config(**data):
  c = config_lib.default_config()
  c.vocab.text_size, c.vq.num_codes, c.vq.image_size, c.vq.patch_size = TEXT_SIZE, NUM_CODES, 8 * GRID, 8
  c.model.vocab_size = 256
  c.data.seq_len, c.train.batch_size = 32, 4
  c.data.source, c.data.dir, c.data.on_bad_record = "shards", "unused", "skip"
  c.data.update(data)
  return c


def write(path, records):
  writer = array_record_module.ArrayRecordWriter(path, config_lib.ARRAY_RECORD_WRITER_OPTIONS)
  for r in records:
    writer.write(r)
  writer.close()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
  """Two shards of 30 + 23 records; every 7th is garbage. Each good record's first text id names it."""
  tmp = tmp_path_factory.mktemp("epochs")
  rng = np.random.default_rng(0)
  records, bad, good = [], [], {}
  for i in range(53):
    if i % 7 == 3:
      records.append(b"\x93not a document" + bytes([i]))
      bad.append(i)
      continue
    ids = np.concatenate([[3 + i], rng.integers(3, TEXT_SIZE, 4)]).astype(np.int32)
    doc = (documents.Document("image_text_pair", (ids, rng.integers(0, NUM_CODES, (GRID, GRID)).astype(np.int32)))
           if i % 2 else documents.Document("text", (ids,)))
    records.append(documents.encode_document(doc))
    good[i] = doc
  paths = [str(tmp / "a.array_record"), str(tmp / "b.array_record")]
  write(paths[0], records[:30])
  write(paths[1], records[30:])
  return paths, bad, good


def record_of(rendered: np.ndarray) -> int:
  """The record a rendered document came from: its caption's first id (after <bos>, or after the image)."""
  text = rendered[(rendered >= 3) & (rendered < TEXT_SIZE)]
  return int(text[0]) - 3


@pytest.mark.parametrize("shuffle", [False, True])
def test_each_epoch_skips_exactly_the_bad_records_and_delivers_every_good_one(corpus, shuffle):
  paths, bad, good = corpus
  c = config(shuffle=shuffle)
  docs = pipeline.documents_dataset(c, sources_lib.from_config(c, paths), num_epochs=3)
  assert len(docs) == 3 * 53
  for epoch in range(3):
    items = [docs[epoch * 53 + k] for k in range(53)]
    skipped = [d.where for d in items if isinstance(d, packing.Skipped)]
    expected = [f"{paths[0]} record {i}" if i < 30 else f"{paths[1]} record {i - 30}" for i in bad]
    assert sorted(skipped) == sorted(expected), f"epoch {epoch}"
    delivered = sorted(record_of(d) for d in items if not isinstance(d, packing.Skipped))
    assert delivered == sorted(good), f"epoch {epoch}"


def test_pairs_are_formatted_per_record_and_epoch_the_same_way_on_every_read(corpus):
  paths, _, good = corpus
  c = config(shuffle=False, caption_first_ratio=0.5)
  docs = pipeline.documents_dataset(c, sources_lib.from_config(c, paths), num_epochs=4)
  pairs = [i for i, d in good.items() if d.kind == "image_text_pair"]
  forms = {i: [bool(docs[e * 53 + i][1] != 0) and int(docs[e * 53 + i][1]) < TEXT_SIZE for e in range(4)]
           for i in pairs}
  assert any(len(set(f)) > 1 for f in forms.values()), "every pair kept one order in all 4 epochs"
  again = pipeline.documents_dataset(c, sources_lib.from_config(c, paths), num_epochs=4)
  assert all(np.array_equal(docs[k], again[k]) for k in range(4 * 53) if not isinstance(docs[k], packing.Skipped))


@pytest.mark.parametrize("workers", [0, 1])
def test_a_run_goes_several_epochs_in_skip_mode_and_resumes_in_the_second(corpus, workers):
  paths, bad, good = corpus
  c = config(shuffle=True, worker_count=workers)
  ds = pipeline.make_dataset(c, paths)
  tokens_per_epoch = sum(len(documents.render(d.segments, pipeline.vocab_lib.from_config(c))) - 1
                         for d in good.values())
  it = iter(ds)
  batches, tokens, state = [], 0, None
  while tokens < 3.5 * tokens_per_epoch:
    if state is None and tokens > 1.5 * tokens_per_epoch:
      state, count = it.get_state(), it.bad_records
    b = next(it)
    tokens += int(b.num_tokens())
    if state is not None:
      batches.append(b)
  assert 3 * len(bad) <= it.bad_records <= 4 * len(bad)
  resumed = iter(ds)
  resumed.set_state(state)
  assert resumed.bad_records == count
  for expected in batches:
    got = next(resumed)
    assert all(np.array_equal(getattr(expected, f), getattr(got, f)) for f in ("tokens", "targets", "segment_ids"))
  assert resumed.bad_records == it.bad_records


# Through unimodal-train: 16 good documents of exactly seq_len + 1 tokens (one full row each, so 8 rows = a step
# and 2 steps = an epoch), then 4 bad records, in file order. The packer reads one document past a full batch, so
# by the end of an epoch's second step it has met that epoch's bad records and no later ones.
CLI_STEPS, CLI_BAD = 8, 4


def cli_corpus(path):
  rng = np.random.default_rng(5)
  records = []
  for i in range(16):
    if i % 2:
      ids = rng.integers(3, 512, 45).astype(np.int32)  # <bos> 45 <boi> 16 codes <eoi> <eos> = 65
      doc = documents.Document("image_text_pair", (ids, rng.integers(0, 64, (4, 4)).astype(np.int32)))
    else:
      doc = documents.Document("text", (rng.integers(3, 512, 63).astype(np.int32),))  # <bos> 63 <eos> = 65
    records.append(documents.encode_document(doc))
  write(path, records + [b"\x93bad" + bytes([i]) for i in range(CLI_BAD)])


def train_command(workdir, data_dir):
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  overrides = {"data.source": "shards", "data.dir": data_dir, "data.on_bad_record": "skip", "data.shuffle": False,
               "data.caption_first_ratio": 1.0, "train.num_steps": CLI_STEPS, "train.log_every": 2,
               "train.checkpoint_every": 4, "optim.warmup_steps": 2}
  return [sys.executable, "-m", "unimodal_jax.cli.train", "--config", os.path.join(repo, "configs", "tiny.py"),
          "--workdir", str(workdir), *[f"--config.{k}={v}" for k, v in overrides.items()]]


def test_cli_run_counts_the_bad_records_of_each_epoch_and_resumes_exactly(tmp_path):
  (tmp_path / "data").mkdir()
  cli_corpus(str(tmp_path / "data" / "train-0.array_record"))
  run = subprocess.run(train_command(tmp_path / "a", tmp_path / "data"), capture_output=True, text=True, timeout=600)
  assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
  rows = {r["step"]: r for r in read_metrics(str(tmp_path / "a" / "metrics.jsonl")) if "data/bad_records" in r}
  assert [rows[s]["data/bad_records"] for s in (2, 4, 6, 8)] == [CLI_BAD * k for k in (1, 2, 3, 4)]

  proc = subprocess.Popen(train_command(tmp_path / "b", tmp_path / "data"), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
  for line in proc.stdout:  # kill in the third epoch, after the checkpoint of step 4
    if line.startswith("step 6/") and os.path.exists(tmp_path / "b" / "checkpoints" / "4" / "commit_success.txt"):
      proc.kill()
      break
  proc.wait(timeout=120)
  resumed = subprocess.run(train_command(tmp_path / "b", tmp_path / "data"), capture_output=True, text=True,
                           timeout=600)
  assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-3000:]
  rows_b = {r["step"]: r for r in read_metrics(str(tmp_path / "b" / "metrics.jsonl")) if "data/bad_records" in r}
  assert [rows_b[s]["data/bad_records"] for s in (2, 4, 6, 8)] == [CLI_BAD * k for k in (1, 2, 3, 4)]
  a, b = (load_all(read_params(str(tmp_path / run / "checkpoints" / str(CLI_STEPS)))) for run in "ab")
  assert all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
