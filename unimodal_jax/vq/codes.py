"""The image tokenizer a run uses, built from config: uint8 images [n, H, W, 3] -> int32 codes [n, h, w].

`image_tokenizer` is the one place that picks the tokenizer by `config.vq.kind`; callers (the shard converter,
the embedded dataset) see only the function it returns. `PHOTOS_TOKENIZER` is the VQGAN that ships in the package.
"""
from collections.abc import Callable
import hashlib
import json
import os

import numpy as np

from unimodal_jax.vq import kmeans

# unimodal-train-vq --config configs/vq_photos.py (assets/photos_tokenizer/README.md): 64px -> 8x8 codes of 256
PHOTOS_TOKENIZER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets", "photos_tokenizer")
VQGAN_FILES = ("config.json", "vqgan.safetensors")  # what `vq_weights.save_tokenizer` writes


def vqgan_dims(path: str) -> tuple[int, int, int]:
  """(image_size, patch_size, num_codes) of the VQGAN saved at `path`, read from its config.json alone."""
  config_file = os.path.join(path, VQGAN_FILES[0])
  try:
    with open(config_file) as f:
      c = json.load(f)
    return c["resolution"], 2 ** (len(c["channel_multiplier"]) - 1), c["num_embeddings"]
  except (OSError, ValueError, KeyError, TypeError) as e:
    raise ValueError(f"config.vq.tokenizer_path={path}: {config_file} is not a saved VQGAN config ({e!r})") from e


def check_vqgan_dims(config) -> None:
  """Raise ValueError, naming config.vq.tokenizer_path and the file, when the VQGAN's dims differ from config.vq."""
  vq = config.vq
  found, expected = vqgan_dims(vq.tokenizer_path), (vq.image_size, vq.patch_size, vq.num_codes)
  if found != expected:
    raise ValueError(f"config.vq.tokenizer_path={vq.tokenizer_path}: {os.path.join(vq.tokenizer_path, VQGAN_FILES[0])}"
                     f" is a VQGAN for (image_size, patch_size, num_codes) = {found}, but config.vq has {expected}")


def fingerprint(path: str) -> str:
  """sha256 over a saved VQGAN's files: which tokenizer made a set of codes, wherever it is installed."""
  digest = hashlib.sha256()
  for name in VQGAN_FILES:
    with open(os.path.join(path, name), "rb") as f:
      digest.update(hashlib.sha256(f.read()).digest())
  return digest.hexdigest()


class VQGANTokenizer:
  """A saved VQGAN as a data-side image tokenizer: `encode` uint8 images -> codes, `decode` codes -> uint8 images."""

  def __init__(self, path: str):
    import jax  # jax/flax only when the VQGAN is used
    from unimodal_jax.vq import tokenize, vqgan
    from unimodal_jax.vq import weights as vq_weights
    self.params, self.model = vq_weights.load_tokenizer(path)
    self.grid_size = self.model.resolution // vqgan.downsampling(self.model)
    devices = jax.local_devices()  # this process's own: the photos are coded on every host alike
    self.encode = tokenize.make_encoder(self.params, self.model, batch_size=8 * len(devices), devices=devices)
    model = vqgan.VQGAN(self.model)
    self._decode = jax.jit(lambda params, codes: vqgan.to_pixels(
        model.apply({"params": params}, codes, method=vqgan.VQGAN.decode_codes)))

  def decode(self, codes) -> np.ndarray:
    """int [n, grid, grid] -> uint8 [n, image_size, image_size, 3]."""
    return np.asarray(self._decode(self.params, np.asarray(codes, np.int32)))


def image_tokenizer(config) -> Callable[[np.ndarray], np.ndarray]:
  """Loads the tokenizer saved at `config.vq.tokenizer_path` and checks it against config.vq."""
  vq, path = config.vq, config.vq.tokenizer_path
  if not path:
    raise ValueError("config.vq.tokenizer_path: needs the saved image tokenizer (vq.kind="
                     f"{vq.kind!r}) to tokenize images")
  if vq.kind == "kmeans":
    tokenizer = kmeans.KMeansTokenizer.load(path)
    found = (tokenizer.image_size, tokenizer.patch_size, tokenizer.num_codes)
    if found != (vq.image_size, vq.patch_size, vq.num_codes):
      raise ValueError(f"config.vq.tokenizer_path={path}: a codebook for image_size, patch_size, num_codes = {found}, "
                       f"but config.vq has {(vq.image_size, vq.patch_size, vq.num_codes)}")
    return lambda images: tokenizer.encode(images).astype(np.int32)
  if vq.kind == "vqgan":
    check_vqgan_dims(config)
    return VQGANTokenizer(path).encode
  raise ValueError(f"config.vq.kind={vq.kind!r} has no image tokenizer here (known: 'kmeans', 'vqgan')")


def image_decoder(config) -> Callable[[np.ndarray], np.ndarray]:
  """codes [n, h, w] -> uint8 images [n, image_size, image_size, 3] with the tokenizer at config.vq.tokenizer_path
  (a k-means codebook's centres, or the VQGAN's decoder), checked against config.vq."""
  vq, path = config.vq, config.vq.tokenizer_path
  if not path:
    raise ValueError(f"config.vq.tokenizer_path: needs the saved image tokenizer (vq.kind={vq.kind!r}) to decode codes")
  if vq.kind == "kmeans":
    tokenizer = kmeans.KMeansTokenizer.load(path)
    found = (tokenizer.image_size, tokenizer.patch_size, tokenizer.num_codes)
    if found != (vq.image_size, vq.patch_size, vq.num_codes):
      raise ValueError(f"config.vq.tokenizer_path={path}: a codebook for image_size, patch_size, num_codes = {found}, "
                       f"but config.vq has {(vq.image_size, vq.patch_size, vq.num_codes)}")
    return tokenizer.decode
  if vq.kind == "vqgan":
    check_vqgan_dims(config)
    return VQGANTokenizer(path).decode
  raise ValueError(f"config.vq.kind={vq.kind!r} has no image decoder here (known: 'kmeans', 'vqgan')")
