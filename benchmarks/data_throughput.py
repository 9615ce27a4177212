"""Grain pipeline throughput: packed tokens/s per process and padding of `make_dataset` at seq_len 4096, read from
ArrayRecord shards of pre-tokenized interleaved documents, with 0, 1 and 2 worker processes; beside it, grain's
bare FirstFitPackIterDataset on the same documents as in-memory token lists, measured in the same run.

  python benchmarks/data_throughput.py [--batches 60] [--docs 3000]

Documents (Chameleon-like sizes, seeded): 40% text (log-normal, median 800 tokens, a few longer than a row),
30% image_text_pairs (32 x 32 codes, a caption of ~20 tokens), 30% interleaved (1-4 images and paragraphs).
Prints a markdown table; results with their command live in docs/benchmarks.md.
"""
import argparse
import os
import tempfile
import time

import grain
import numpy as np

from unimodal_jax.config import default_config
from unimodal_jax.data import documents, packing, pipeline
from unimodal_jax.data import vocab as vocab_lib

SEQ_LEN, ROWS, GRID = 4096, 16, 32


def make_documents(n: int, text_size: int, num_codes: int, seed: int = 0) -> list[documents.Document]:
  rng = np.random.default_rng(seed)
  text = lambda k: rng.integers(3, text_size, max(1, int(k))).astype(np.int32)  # noqa: E731
  image = lambda: rng.integers(0, num_codes, (GRID, GRID)).astype(np.int32)  # noqa: E731
  docs = []
  for _ in range(n):
    u = rng.random()
    if u < 0.4:
      docs.append(documents.Document("text", (text(rng.lognormal(np.log(800), 1.0)),)))
    elif u < 0.7:
      docs.append(documents.Document("image_text_pair", (text(rng.normal(20, 5)), image())))
    else:
      segments = [text(rng.lognormal(np.log(150), 0.7))]
      for _ in range(int(rng.integers(1, 5))):
        segments += [image(), text(rng.lognormal(np.log(150), 0.7))]
      docs.append(documents.Document("interleaved", tuple(segments)))
  return docs


def config_for(data_dir: str, workers: int):
  c = default_config()
  c.vocab.text_size, c.vq.num_codes, c.vq.image_size, c.vq.patch_size = 65536, 8192, 512, 16
  c.data.source, c.data.dir, c.data.seq_len, c.data.worker_count = "shards", data_dir, SEQ_LEN, workers
  c.train.batch_size = ROWS
  return c


def time_batches(it, batches: int) -> tuple[float, float]:
  """(row slots per second, padding fraction) over `batches` batches after one warm-up batch."""
  next(it)
  used = total = 0
  t0 = time.perf_counter()
  for _ in range(batches):
    b = next(it)
    used += b.num_tokens()
    total += b.tokens.size
  return total / (time.perf_counter() - t0), 1 - used / total


def in_memory(token_lists) -> grain.IterDataset:
  ds = grain.MapDataset.source(token_lists).repeat()
  return ds.to_iter_dataset(grain.ReadOptions(num_threads=0, prefetch_buffer_size=0))


def packer_only(token_lists, config, batches: int) -> tuple[float, float]:
  """Our packer alone (split at image boundaries, all six fields) on the same in-memory token lists."""
  ds = packing.PackIterDataset(in_memory(token_lists), pipeline.pack_spec(config, ROWS))
  return time_batches(iter(pipeline.CountBadRecords(ds)), batches)


def bare_grain(token_lists, batches: int) -> tuple[float, float]:
  ds = in_memory(token_lists).map(lambda t: {"tokens": t[:SEQ_LEN]})  # its inputs must fit a row
  ds = grain.experimental.FirstFitPackIterDataset(ds, length_struct={"tokens": SEQ_LEN}, num_packing_bins=ROWS,
                                                  shuffle_bins=False).batch(ROWS)
  it = iter(ds)
  next(it)
  used = total = 0
  t0 = time.perf_counter()
  for _ in range(batches):
    b = next(it)
    used += int(np.sum(b["tokens_segment_ids"] > 0))
    total += b["tokens"].size
  return total / (time.perf_counter() - t0), 1 - used / total


def main():
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--batches", type=int, default=60)
  parser.add_argument("--docs", type=int, default=3000)
  args = parser.parse_args()
  with tempfile.TemporaryDirectory() as data_dir:
    config = config_for(data_dir, 0)
    vocab = vocab_lib.from_config(config)
    docs = make_documents(args.docs, config.vocab.text_size, config.vq.num_codes)
    paths = [os.path.join(data_dir, f"train-{i:05d}.array_record") for i in range(8)]
    documents.write_shards(docs, paths)
    tokens = [documents.render(d.segments, vocab) for d in docs]
    print(f"{len(docs)} documents, {sum(map(len, tokens)) / 1e6:.1f}M tokens in {len(paths)} shards; "
          f"rows {ROWS} x {SEQ_LEN}; {os.cpu_count()} cores\n")
    bare, bare_padding = bare_grain(tokens, args.batches)
    print("| pipeline | workers | packed tokens/s | vs bare grain | padding |")
    print("|---|---|---|---|---|")
    print(f"| grain FirstFitPackIterDataset, in-memory lists, 2 fields | 0 | {bare / 1e6:.2f}M | 1.00 | "
          f"{100 * bare_padding:.1f}% |", flush=True)
    rate, padding = packer_only(tokens, config, args.batches)
    print(f"| packing.PackIterDataset, in-memory lists, all 6 fields | 0 | {rate / 1e6:.2f}M | {rate / bare:.2f} | "
          f"{100 * padding:.1f}% |", flush=True)
    for workers in (0, 1, 2):
      it = iter(pipeline.make_dataset(config_for(data_dir, workers), paths))
      rate, padding = time_batches(it, args.batches)
      it.close()
      print(f"| make_dataset: ArrayRecord, check, format, pack, all 6 fields | {workers} | {rate / 1e6:.2f}M | "
            f"{rate / bare:.2f} | {100 * padding:.1f}% |", flush=True)


if __name__ == "__main__":
  main()
