"""The image tokenizer a run uses, built from config: uint8 images [n, H, W, 3] -> int32 codes [n, h, w].

`image_tokenizer` is the one place that picks the tokenizer by `config.vq.kind`; callers (the shard converter,
the embedded dataset) see only the function it returns. `PHOTOS_TOKENIZER` is the VQGAN that ships in the package.
"""
from collections.abc import Callable
import hashlib
import json
import os

import numpy as np
from etils import epath

from unimodal_jax.vq import kmeans

# unimodal-train-vq --config configs/vq_photos.py (assets/photos_tokenizer/README.md): 64px -> 8x8 codes of 256
PHOTOS_TOKENIZER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets", "photos_tokenizer")
VQGAN_FILES = ("config.json", "vqgan.safetensors")  # what `vq_weights.save_tokenizer` writes


def vqgan_dims(path: str) -> tuple[int, int, int]:
  """(image_size, patch_size, num_codes) of the VQGAN saved at `path`, read from its config.json alone."""
  config_file = epath.Path(path) / VQGAN_FILES[0]
  try:
    c = json.loads(config_file.read_text())
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
    digest.update(hashlib.sha256((epath.Path(path) / name).read_bytes()).digest())
  return digest.hexdigest()


def make_encoder(params, config, batch_size: int, devices=None):
  """uint8 [n, R, R, 3] (any n) -> int32 codes [n, h, w], in jitted batches of `batch_size` split over `devices`
  (default all; a multi-process ingest passes each process its local ones). Batches are zero-padded to one shape."""
  import jax  # jax/flax only when the VQGAN is used
  from jax.sharding import NamedSharding, PartitionSpec as P
  from unimodal_jax.vq import vqgan
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


class VQGANTokenizer:
  """A saved VQGAN as a data-side image tokenizer: `encode` uint8 images -> codes, `decode` codes -> uint8 images."""

  def __init__(self, path: str):
    import jax  # jax/flax only when the VQGAN is used
    from unimodal_jax.vq import vqgan
    from unimodal_jax.vq import weights as vq_weights
    self.params, self.model = vq_weights.load_tokenizer(path)
    self.grid_size = self.model.resolution // vqgan.downsampling(self.model)
    devices = jax.local_devices()  # this process's own: the photos are coded on every host alike
    self.encode = make_encoder(self.params, self.model, batch_size=8 * len(devices), devices=devices)
    model = vqgan.VQGAN(self.model)
    self._decode = jax.jit(lambda params, codes: vqgan.to_pixels(
        model.apply({"params": params}, codes, method=vqgan.VQGAN.decode_codes)))

  def decode(self, codes) -> np.ndarray:
    """int [n, grid, grid] -> uint8 [n, image_size, image_size, 3]."""
    return np.asarray(self._decode(self.params, np.asarray(codes, np.int32)))


def _kmeans_tokenizer(vq) -> kmeans.KMeansTokenizer:
  """The k-means codebook at vq.tokenizer_path, checked against vq's image_size, patch_size and num_codes."""
  path = vq.tokenizer_path
  tokenizer = kmeans.KMeansTokenizer.load(path)
  found = (tokenizer.image_size, tokenizer.patch_size, tokenizer.num_codes)
  if found != (vq.image_size, vq.patch_size, vq.num_codes):
    raise ValueError(f"config.vq.tokenizer_path={path}: a codebook for image_size, patch_size, num_codes = {found}, "
                     f"but config.vq has {(vq.image_size, vq.patch_size, vq.num_codes)}")
  return tokenizer


def image_tokenizer(config) -> Callable[[np.ndarray], np.ndarray]:
  """Loads the tokenizer saved at `config.vq.tokenizer_path` and checks it against config.vq."""
  vq, path = config.vq, config.vq.tokenizer_path
  if not path:
    raise ValueError("config.vq.tokenizer_path: needs the saved image tokenizer (vq.kind="
                     f"{vq.kind!r}) to tokenize images")
  if vq.kind == "kmeans":
    tokenizer = _kmeans_tokenizer(vq)
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
    return _kmeans_tokenizer(vq).decode
  if vq.kind == "vqgan":
    check_vqgan_dims(config)
    return VQGANTokenizer(path).decode
  raise ValueError(f"config.vq.kind={vq.kind!r} has no image decoder here (known: 'kmeans', 'vqgan')")
