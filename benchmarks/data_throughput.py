"""Grain pipeline throughput: packed tokens/s and padding of `make_dataset` on the embedded dataset.

  python benchmarks/data_throughput.py [--batches 200]

Prints a markdown table; results with their command live in docs/benchmarks.md.
"""
import argparse
import os
import tempfile
import time

import numpy as np

from unimodal_jax.config import default_config
from unimodal_jax.data import embedded, pipeline

SHAPES = [(256, 16), (1024, 16), (4096, 8)]  # (seq_len, rows per batch)


def measure(config, paths, batches: int) -> dict:
  it = iter(pipeline.make_dataset(config, paths))
  next(it)  # the first batch pays for opening the shards
  used = total = 0
  t0 = time.perf_counter()
  for _ in range(batches):
    b = next(it)
    used += b.num_tokens()
    total += b.tokens.size
  elapsed = time.perf_counter() - t0
  return {"tokens_per_s": total / elapsed, "batches_per_s": batches / elapsed, "padding": 1 - used / total}


def main():
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--batches", type=int, default=200)
  args = parser.parse_args()
  config = default_config()  # the demo's data settings
  with tempfile.TemporaryDirectory() as data_dir:
    t0 = time.perf_counter()
    paths = embedded.prepare(config, data_dir)
    print(f"embedded dataset built in {time.perf_counter() - t0:.1f} s ({os.cpu_count()} cores)\n")
    print("| seq_len x rows | packed tokens/s | batches/s | padding |")
    print("|---|---|---|---|")
    for seq_len, rows in SHAPES:
      config.data.seq_len, config.train.batch_size = seq_len, rows
      r = measure(config, paths, args.batches)
      print(f"| {seq_len} x {rows} | {r['tokens_per_s'] / 1e6:.2f}M | {r['batches_per_s']:.0f} | "
            f"{100 * r['padding']:.1f}% |", flush=True)


if __name__ == "__main__":
  main()
