"""Images/s of VQGAN tokenization: the jitted encoder alone, and unimodal-tokenize end to end (JPEG files ->
decode, crop, resize -> encode -> ArrayRecord shards), at two resolutions of the configs/vq_photos.py model.
(Not named tokenize.py: run as a script, that would shadow the standard library's `tokenize` module.)

  python benchmarks/tokenize_throughput.py [--resolutions 64 256] [--images 256] [--chameleon]

--chameleon adds the encoder of Chameleon's tokenizer (configs/vq_chameleon.py, 512px) on a few images.
Prints a markdown table; results with their command live in docs/benchmarks.md.
"""
import argparse
import os
import platform
import tempfile
import time

import jax
import numpy as np
from PIL import Image

from unimodal_jax.config import load_config_file
from unimodal_jax.vq import images as images_lib
from unimodal_jax.vq import tokenize, vqgan
from unimodal_jax.vq import weights as vq_weights

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def random_params(config, seed=0):
  shapes = jax.eval_shape(lambda: vqgan.init_params(config, jax.random.key(0)))
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda s: (0.05 * rng.normal(size=s.shape)).astype(np.float32), shapes)


def encoder_rate(config, params, batch_size, num_images) -> tuple[float, float]:
  """(compile + first batch seconds, images/s after it) of tokenize.make_encoder on random pixels."""
  encode = tokenize.make_encoder(params, config, batch_size)
  pixels = np.random.default_rng(0).integers(0, 256, (num_images, config.resolution, config.resolution, 3), np.uint8)
  start = time.perf_counter()
  encode(pixels[:batch_size])
  first = time.perf_counter() - start
  start = time.perf_counter()
  encode(pixels)
  return first, num_images / (time.perf_counter() - start)


def end_to_end_rate(config, params, batch_size, num_images, workdir) -> float:
  """images/s of tokenize.tokenize over a folder of 2x-resolution JPEGs (compile excluded: a warm-up run first)."""
  tok_dir, src = os.path.join(workdir, "tok"), os.path.join(workdir, "images")
  vq_weights.save_tokenizer(params, config, tok_dir)
  os.makedirs(src, exist_ok=True)
  rng = np.random.default_rng(1)
  side = 2 * config.resolution
  for i in range(num_images):
    Image.fromarray(rng.integers(0, 256, (side, side + side // 4, 3), np.uint8)).save(f"{src}/{i:05d}.jpg", quality=90)
  source = images_lib.FolderSource(src)
  tokenize.tokenize(source, tok_dir, os.path.join(workdir, "warm"), shard_size=batch_size, batch_size=batch_size,
                    progress=False)
  start = time.perf_counter()
  tokenize.tokenize(source, tok_dir, os.path.join(workdir, "codes"), shard_size=4 * batch_size,
                    batch_size=batch_size, progress=False)
  return num_images / (time.perf_counter() - start)


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--resolutions", type=int, nargs="+", default=[64, 256])
  parser.add_argument("--images", type=int, default=256)
  parser.add_argument("--batch_size", type=int, default=16)
  parser.add_argument("--chameleon", action="store_true")
  args = parser.parse_args()
  devices = jax.devices()
  print(f"{len(devices)} x {devices[0].device_kind} ({platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores), jax {jax.__version__}\n")
  print("| model | resolution | codes | batch | compile + 1st batch (s) | encoder img/s | end-to-end img/s |")
  print("|---|---|---|---|---|---|---|")
  base = load_config_file(os.path.join(REPO, "configs", "vq_photos.py")).vqgan
  for resolution in args.resolutions:
    config = vqgan.model_config(**{**base.to_dict(), "resolution": resolution})
    params = random_params(config)
    first, rate = encoder_rate(config, params, args.batch_size, args.images)
    with tempfile.TemporaryDirectory() as tmp:
      e2e = end_to_end_rate(config, params, args.batch_size, args.images, tmp)
    grid = resolution // vqgan.downsampling(config)
    print(f"| vq_photos | {resolution} | {grid}x{grid} | {args.batch_size} | {first:.1f} | {rate:.1f} | {e2e:.1f} |",
          flush=True)
  if args.chameleon:
    config = load_config_file(os.path.join(REPO, "configs", "vq_chameleon.py")).vqgan
    batch = len(devices)
    first, rate = encoder_rate(config, random_params(config), batch, 2 * batch)
    print(f"| vq_chameleon | 512 | 32x32 | {batch} | {first:.1f} | {rate:.2f} | - |", flush=True)


if __name__ == "__main__":
  main()
