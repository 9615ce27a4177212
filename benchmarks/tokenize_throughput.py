"""Images/s of image tokenization end to end (JPEG files -> read + decode + crop/resize -> VQGAN encode -> document
shards written), per process, with 1 and with N processes (jax.distributed on 127.0.0.1, each process its own CPU
devices), and where the time goes: decoding/preprocessing vs encoding vs the rest (text, checks, writing). Also the
jitted encoder alone. (Not named tokenize.py: run as a script, that would shadow the standard library's module.)

  python benchmarks/tokenize_throughput.py [--resolution 64] [--images 256] [--processes 1 2] [--chameleon]

--chameleon adds the encoder of Chameleon's tokenizer (configs/vq_chameleon.py, 512px) on a few images.
Prints a markdown table; results with their command live in docs/benchmarks.md.
"""
import argparse
import dataclasses
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def random_params(config, seed=0):
  import jax
  from unimodal_jax.vq import vqgan
  shapes = jax.eval_shape(lambda: vqgan.init_params(config, jax.random.key(0)))
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda s: (0.05 * rng.normal(size=s.shape)).astype(np.float32), shapes)


def vq_config(resolution: int):
  from unimodal_jax.config import load_config_file
  from unimodal_jax.vq import vqgan
  base = load_config_file(os.path.join(REPO, "configs", "vq_photos.py")).vqgan
  return vqgan.model_config(**{**base.to_dict(), "resolution": resolution})


def prepare_inputs(root: str, resolution: int, num_images: int) -> None:
  """A folder of 2x-resolution JPEGs with captions, a random VQGAN and a text tokenizer under `root`."""
  from unimodal_jax.data import tokenizer as tokenizer_lib
  from unimodal_jax.vq import weights as vq_weights
  config = vq_config(resolution)
  vq_weights.save_tokenizer(random_params(config), config, os.path.join(root, "vqgan"))
  captions = [f"Picture {i} of a benchmark." for i in range(num_images)]
  tokenizer_lib.TextTokenizer.train(captions, 400).save(os.path.join(root, "text.json"))
  os.makedirs(os.path.join(root, "images"))
  rng, side = np.random.default_rng(1), 2 * resolution
  for i, caption in enumerate(captions):
    from PIL import Image
    Image.fromarray(rng.integers(0, 256, (side, side + side // 4, 3), np.uint8)).save(
        os.path.join(root, "images", f"{i:05d}.jpg"), quality=90)
    with open(os.path.join(root, "images", f"{i:05d}.txt"), "w") as f:
      f.write(caption)


def worker(args) -> None:
  """One process of a run: tokenizes its share of the shards, prints its timings as JSON."""
  import jax
  if args.num_processes > 1:
    jax.distributed.initialize(coordinator_address=f"127.0.0.1:{args.port}", num_processes=args.num_processes,
                               process_id=args.process_id)
  from jax.experimental import multihost_utils
  from unimodal_jax.ingest import build, encoders, sources
  timers = {"decode": 0.0, "encode": 0.0}

  def timed(name, fn):
    def call(*a, **k):
      start = time.perf_counter()
      try:
        return fn(*a, **k)
      finally:
        timers[name] += time.perf_counter() - start
    return call

  tok, plan = encoders.from_vqgan(os.path.join(args.root, "text.json"), os.path.join(args.root, "vqgan"),
                                  batch_size=args.batch_size, max_document_tokens=1 << 20,
                                  devices=jax.local_devices())
  tok.encode(np.zeros((args.batch_size, args.resolution, args.resolution, 3), np.uint8))  # compile outside the clock
  tok = dataclasses.replace(tok, encode=timed("encode", tok.encode))
  source = sources.FolderSource(os.path.join(args.root, "images"))
  source.entry = timed("decode", source.entry)
  build.images_lib.prepare = timed("decode", build.images_lib.prepare)
  barrier = (lambda: multihost_utils.sync_global_devices("bench")) if args.num_processes > 1 else (lambda: None)
  barrier()
  start = time.perf_counter()
  build.write_documents(source, os.path.join(args.root, f"out-{args.num_processes}"), tok, plan=plan,
                        shard_size=args.shard_size, process_index=jax.process_index(),
                        process_count=jax.process_count(), barrier=barrier, progress=False)
  total = time.perf_counter() - start
  mine = sum(min(len(source), (k + 1) * args.shard_size) - k * args.shard_size
             for k in range(jax.process_index(), -(-len(source) // args.shard_size), jax.process_count()))
  print(json.dumps({"images": mine, "seconds": total, **timers}), flush=True)


def run_processes(args, n: int) -> list[dict]:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count={args.devices}")
  procs = [subprocess.Popen(
      [sys.executable, __file__, "--worker", f"--root={args.root}", f"--num_processes={n}", f"--process_id={i}",
       f"--port={port}", f"--resolution={args.resolution}", f"--batch_size={args.batch_size}",
       f"--shard_size={args.shard_size}"], env=env, stdout=subprocess.PIPE, text=True) for i in range(n)]
  outs = [p.communicate()[0] for p in procs]
  if any(p.returncode for p in procs):
    raise RuntimeError(f"a worker failed: {outs}")
  return [json.loads(o.strip().splitlines()[-1]) for o in outs]


def encoder_rate(resolution: int, batch_size: int, num_images: int, config=None) -> float:
  """images/s of vq.codes.make_encoder alone on random pixels (after a compile)."""
  from unimodal_jax.vq import codes
  config = config or vq_config(resolution)
  encode = codes.make_encoder(random_params(config), config, batch_size)
  pixels = np.random.default_rng(0).integers(0, 256, (num_images, config.resolution, config.resolution, 3), np.uint8)
  encode(pixels[:batch_size])
  start = time.perf_counter()
  encode(pixels)
  return num_images / (time.perf_counter() - start)


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--resolution", type=int, default=64)
  parser.add_argument("--images", type=int, default=256)
  parser.add_argument("--batch_size", type=int, default=16)
  parser.add_argument("--shard_size", type=int, default=32)
  parser.add_argument("--processes", type=int, nargs="+", default=[1, 2])
  parser.add_argument("--devices", type=int, default=1, help="CPU devices per process")
  parser.add_argument("--chameleon", action="store_true")
  parser.add_argument("--worker", action="store_true")
  parser.add_argument("--root")
  parser.add_argument("--num_processes", type=int, default=1)
  parser.add_argument("--process_id", type=int, default=0)
  parser.add_argument("--port", type=int, default=0)
  args = parser.parse_args()
  if args.worker:
    return worker(args)
  import jax
  print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, jax {jax.__version__}, "
        f"{args.devices} CPU device(s) per process; {args.images} JPEGs of {2 * args.resolution}x"
        f"{2 * args.resolution + args.resolution // 2} -> {args.resolution}px, batch {args.batch_size}\n")
  print("| processes | img/s per process | img/s total | decode + preprocess | encode | other (text, checks, write) |")
  print("|---|---|---|---|---|---|")
  with tempfile.TemporaryDirectory() as root:
    args.root = root
    prepare_inputs(root, args.resolution, args.images)
    for n in args.processes:
      results = run_processes(args, n)
      wall = max(r["seconds"] for r in results)
      seconds = sum(r["seconds"] for r in results)
      share = {k: sum(r[k] for r in results) / seconds for k in ("decode", "encode")}
      per_process = np.mean([r["images"] / r["seconds"] for r in results])
      print(f"| {n} | {per_process:.1f} | {args.images / wall:.1f} | {100 * share['decode']:.0f}% | "
            f"{100 * share['encode']:.0f}% | {100 * (1 - share['decode'] - share['encode']):.0f}% |", flush=True)
  print(f"\nencoder alone, {args.resolution}px, {len(jax.devices())} device(s): "
        f"{encoder_rate(args.resolution, args.batch_size, args.images):.1f} img/s")
  if args.chameleon:
    from unimodal_jax.config import load_config_file
    config = load_config_file(os.path.join(REPO, "configs", "vq_chameleon.py")).vqgan
    batch = len(jax.devices())
    print(f"encoder alone, vq_chameleon 512px: {encoder_rate(512, batch, 2 * batch, config):.2f} img/s")


if __name__ == "__main__":
  main()
