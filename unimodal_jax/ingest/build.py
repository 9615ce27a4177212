"""Raw inputs -> document records (version 2, data/documents.py) in atomic shards: the work of unimodal-make-shards and
unimodal-tokenize.

Process p of n writes shards p, p + n, ...; shard k holds the documents of inputs [k * shard_size, (k + 1) *
shard_size) in input order. So the shards do not depend on the number of processes, and a rerun after a kill rewrites
exactly the unfinished ones, byte for byte as an uninterrupted run would have written them.
"""
import collections
import dataclasses
from collections.abc import Callable

import numpy as np
from absl import logging
from tqdm import tqdm

from unimodal_jax.data import documents
from unimodal_jax.data import tokenizer as tokenizer_lib
from unimodal_jax.data import vocab as vocab_lib
from unimodal_jax.ingest import shards as shards_lib
from unimodal_jax.vq import images as images_lib


@dataclasses.dataclass(frozen=True)
class Tokenizers:
  """What turns an entry into a document: the text tokenizer, the image encoder and the limits a document must meet."""
  text: tokenizer_lib.TextTokenizer
  encode: Callable[[np.ndarray], np.ndarray]  # uint8 [n, image_size, image_size, 3] -> int32 codes [n, grid, grid]
  image_size: int
  grid: int
  vocab: vocab_lib.Vocab
  max_document_tokens: int
  min_size: int = 16  # shorter image side below this: skipped as "tiny"
  max_pixels: int = 8192 * 8192  # more pixels: skipped as "huge"


def _entry_segments(source, i: int, tok: Tokenizers, bad, converted):
  """(where, kind, [text ids | uint8 image]) of input i, or None when it is bad (reported to `bad`)."""
  try:
    where, kind, parts = source.entry(i)
  except (OSError, ValueError, KeyError) as e:
    bad(f"input {i}", "unreadable", e)
    return None
  segments = []
  for name, value in parts:
    if name == "text":
      segments.append(tok.text.encode(value))
      continue
    try:
      image, mode = images_lib.prepare(value, tok.image_size, min_size=tok.min_size, max_pixels=tok.max_pixels)
    except images_lib.Skip as e:
      bad(where, e.reason, e)
      return None
    if mode:
      logging.info("converted %s from mode %s to RGB", where, mode)
      converted[mode] += 1
    segments.append(image)
  return where, kind, segments


def shard_documents(source, indices, tok: Tokenizers, on_bad_record: str):
  """(documents, stats) of the inputs `indices`: images prepared, encoded together, every document checked as the
  reader will check it."""
  bad, converted = shards_lib.BadRecords(on_bad_record), collections.Counter()
  entries = [e for e in (_entry_segments(source, i, tok, bad, converted) for i in indices) if e is not None]
  pixels = [s for _, _, segments in entries for s in segments if s.ndim == 3]
  codes = iter(tok.encode(np.stack(pixels)) if pixels else [])
  docs = []
  for where, kind, segments in entries:
    doc = documents.Document(kind, tuple(next(codes).astype(np.int32) if s.ndim == 3 else s for s in segments))
    try:
      documents.check_document(doc, tok.vocab, tok.grid, tok.max_document_tokens, where)
    except ValueError as e:
      bad(where, "invalid", e)
      continue
    docs.append(doc)
  stats = {"inputs": len(indices), "documents": len(docs), "skipped": dict(bad.skipped),
           "skipped_inputs": bad.names, "converted": dict(converted)}
  return docs, stats


def write_documents(source, out_dir: str, tok: Tokenizers, *, plan: dict, shard_size: int = 1024,
                    prefix: str = "train", on_bad_record: str = "raise", process_index: int = 0,
                    process_count: int = 1, barrier: Callable[[], None] = lambda: None, progress: bool = True) -> dict:
  """Writes the documents of `source` into `out_dir`; returns the totals over all shards (after `barrier`, which
  waits for every process). `plan` describes the inputs and tokenizers: a rerun resumes only the same plan."""
  if shard_size < 1:
    raise ValueError(f"--shard_size must be >= 1, got {shard_size}")
  shards_lib.BadRecords(on_bad_record)  # an unknown policy fails before any work
  num_shards = max(1, -(-len(source) // shard_size))
  limits = {"image_size": tok.image_size, "min_size": tok.min_size, "max_pixels": tok.max_pixels,
            "max_document_tokens": tok.max_document_tokens, "vocab": dataclasses.asdict(tok.vocab)}
  shards = shards_lib.ShardSet(out_dir, prefix, num_shards,
                               {"inputs": len(source), "shard_size": shard_size, **limits, **plan})
  shards.open(write_plan=process_index == 0)
  mine = range(process_index, num_shards, process_count)
  for k in tqdm(mine, unit="shard", disable=not progress, desc=f"ingest (process {process_index})"):
    if shards.finished(k) is not None:
      continue
    docs, stats = shard_documents(source, range(k * shard_size, min(len(source), (k + 1) * shard_size)), tok,
                                  on_bad_record)
    shards.write(k, (documents.encode_document(d) for d in docs), stats)
  barrier()
  totals = shards.totals()
  if process_index == 0:
    shards.finish(totals)
  logging.warning("%s", shards_lib.summary(totals, out_dir))
  return totals
