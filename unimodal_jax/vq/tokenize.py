"""`unimodal-tokenize`: images -> VQGAN code grids in ArrayRecord shards (jitted, batched, sharded over devices).

Shard k holds inputs [k * shard_size, (k + 1) * shard_size) in order; it is written under a temporary name and
renamed when complete, so a rerun skips finished shards and redoes the rest. A record is
`msgpack_serialize({"index": int, "source": str, "codes": int32 [h, w]})`. Bad inputs are converted or skipped.
"""
import collections
import glob
import json
import os

import flax.serialization
import jax
import numpy as np
from absl import logging
from array_record.python import array_record_module
from jax.sharding import NamedSharding, PartitionSpec as P
from tqdm import tqdm

from unimodal_jax.config import ARRAY_RECORD_WRITER_OPTIONS
from unimodal_jax.vq import images as images_lib
from unimodal_jax.vq import vqgan
from unimodal_jax.vq import weights as vq_weights

STATS_SUFFIX = ".stats.json"


def shard_path(out_dir: str, k: int, num_shards: int) -> str:
  return os.path.join(out_dir, f"codes-{k:05d}-of-{num_shards:05d}.array_record")


def _tmp(path: str) -> str:
  return os.path.join(os.path.dirname(path), "." + os.path.basename(path) + ".tmp")


def make_encoder(params, config, batch_size: int, devices=None):
  """uint8 [n, R, R, 3] (any n) -> int32 codes [n, h, w], in jitted batches of `batch_size` split over devices."""
  devices = jax.devices() if devices is None else devices
  if batch_size % len(devices):
    raise ValueError(f"--batch_size={batch_size} is not divisible by the {len(devices)} devices")
  mesh = jax.sharding.Mesh(np.asarray(devices), ("data",))
  sharding = NamedSharding(mesh, P("data"))
  params = jax.device_put(params, NamedSharding(mesh, P()))
  model = vqgan.VQGAN(config)

  @jax.jit
  def encode(params, pixels):
    return model.apply({"params": params}, vqgan.from_pixels(pixels), method=vqgan.VQGAN.encode)[1]

  def run(pixels: np.ndarray) -> np.ndarray:
    out = []
    for start in range(0, len(pixels), batch_size):
      chunk = pixels[start:start + batch_size]
      padded = np.zeros((batch_size,) + chunk.shape[1:], np.uint8)  # one compiled shape for every batch
      padded[:len(chunk)] = chunk
      out.append(np.asarray(encode(params, jax.device_put(padded, sharding)))[:len(chunk)])
    grid = config.resolution // vqgan.downsampling(config)
    return np.concatenate(out) if out else np.zeros((0, grid, grid), np.int32)
  return run


def encode_record(index: int, source: str, codes: np.ndarray) -> bytes:
  return flax.serialization.msgpack_serialize({"index": index, "source": source, "codes": codes.astype(np.int32)})


def decode_record(record: bytes) -> dict:
  return flax.serialization.msgpack_restore(record)


def read_shards(out_dir: str) -> list[dict]:
  """Every record of every finished shard in `out_dir`, in shard order."""
  import grain
  paths = sorted(glob.glob(os.path.join(out_dir, "codes-*.array_record")))
  if not paths:
    return []
  source = grain.sources.ArrayRecordDataSource(paths)
  return [decode_record(source[i]) for i in range(len(source))]


def _tokenize_shard(source, indices, encode, resolution, min_size, max_pixels):
  pixels, kept, stats = [], [], {"inputs": len(indices), "skipped": collections.Counter(),
                                 "converted": collections.Counter()}
  for i in indices:
    name = source.name(i)
    try:
      image, converted = images_lib.prepare(source.load(i), resolution, min_size=min_size,
                                                max_pixels=max_pixels)
    except images_lib.Skip as e:
      logging.warning("skipped %s (%s)", name, e)
      stats["skipped"][e.reason] += 1
      continue
    if converted:
      logging.info("converted %s from mode %s to RGB", name, converted)
      stats["converted"][converted] += 1
    pixels.append(image)
    kept.append((i, name))
  codes = encode(np.stack(pixels) if pixels else np.zeros((0, resolution, resolution, 3), np.uint8))
  stats["written"] = len(kept)
  return [encode_record(i, name, c) for (i, name), c in zip(kept, codes)], stats


def _write_atomic(path: str, records) -> None:
  tmp = _tmp(path)
  writer = array_record_module.ArrayRecordWriter(tmp, ARRAY_RECORD_WRITER_OPTIONS)
  for r in records:
    writer.write(r)
  writer.close()
  os.replace(tmp, path)


def tokenize(source, tokenizer_dir: str, out_dir: str, *, shard_size: int = 1024, batch_size: int = 64,
             min_size: int = 16, max_pixels: int = 8192 * 8192, progress: bool = True) -> dict:
  """Tokenize every input of `source` into `out_dir`; returns totals {inputs, written, skipped, converted,
  shards_skipped (finished before this run)}."""
  params, config = vq_weights.load_tokenizer(tokenizer_dir)
  encode = make_encoder(params, config, batch_size)
  os.makedirs(out_dir, exist_ok=True)
  for stale in glob.glob(os.path.join(out_dir, ".*.tmp")):  # left by a run that was killed mid-shard
    os.remove(stale)
  num_shards = max(1, -(-len(source) // shard_size))
  totals = {"inputs": 0, "written": 0, "skipped": collections.Counter(), "converted": collections.Counter(),
            "shards_skipped": 0}
  bar = tqdm(total=len(source), unit="img", disable=not progress, desc="tokenize")
  for k in range(num_shards):
    path = shard_path(out_dir, k, num_shards)
    indices = range(k * shard_size, min(len(source), (k + 1) * shard_size))
    if os.path.exists(path) and os.path.exists(path + STATS_SUFFIX):
      with open(path + STATS_SUFFIX) as f:
        stats = json.load(f)
      totals["shards_skipped"] += 1
    else:
      records, stats = _tokenize_shard(source, indices, encode, config.resolution, min_size, max_pixels)
      with open(_tmp(path + STATS_SUFFIX), "w") as f:
        json.dump(stats, f)
      os.replace(_tmp(path + STATS_SUFFIX), path + STATS_SUFFIX)  # before the shard: a finished shard has stats
      _write_atomic(path, records)
    for key in ("inputs", "written"):
      totals[key] += stats[key]
    for key in ("skipped", "converted"):
      totals[key].update(stats[key])
    bar.update(len(indices))
  bar.close()
  totals["skipped"], totals["converted"] = dict(totals["skipped"]), dict(totals["converted"])
  logging.warning("tokenized %d of %d inputs into %d shards in %s; skipped %s; converted %s", totals["written"],
                  totals["inputs"], num_shards, out_dir, totals["skipped"] or "none", totals["converted"] or "none")
  return totals
