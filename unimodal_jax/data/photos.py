"""Training images for the VQGAN: the scikit-image sample photographs as random square crops with flips.

Offline (the photos ship inside scikit-image); batches are a pure function of (seed, step, process): no iterator state.
"""
import itertools

import numpy as np
from absl import logging

from unimodal_jax.data import embedded
from unimodal_jax.vq import images as images_lib

SCALES = (1.0, 1.5, 2.0)  # short side of each pre-resized copy, in multiples of the crop side


def sample_photos() -> list[tuple[str, np.ndarray]]:
  """(name, shipped array) of each distinct scikit-image sample of the embedded dataset."""
  names = sorted({(name, index) for name, index, _ in embedded.IMAGES}, key=str)
  return [(f"{n}[{i}]" if i is not None else n, embedded.sample_image(n, i)) for n, i in names]


class PhotoCrops:
  """uint8 [B, size, size, 3] batches: a random photo, scale, crop position and horizontal flip per row."""

  def __init__(self, size: int, seed: int, scales=SCALES, images=None):
    """`images`: (name, encoded bytes or decoded array) pairs; default the embedded dataset's photos."""
    self.size, self.seed = size, seed
    images = sample_photos() if images is None else images
    self.names = [name for name, _ in images]
    self.copies = [[images_lib.prepare(data, int(round(size * s)), crop=None)[0] for s in scales]
                   for _, data in images]
    self.centres = np.stack([images_lib.prepare(data, size)[0] for _, data in images])

  def batch(self, step: int, batch_size: int, process_index: int = 0) -> np.ndarray:
    rng = np.random.default_rng((self.seed, step, process_index))
    out = np.empty((batch_size, self.size, self.size, 3), np.uint8)
    for row in range(batch_size):
      copies = self.copies[rng.integers(len(self.copies))]
      image = copies[rng.integers(len(copies))]
      out[row] = random_crop(image, self.size, rng)
    return out

  def eval_images(self) -> np.ndarray:
    """The centre square of each photo (the whole short side), prepared as the tokenizer's inputs are: a fixed set
    for PSNR and figures."""
    return self.centres


def random_crop(image: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
  """A size x size crop of `image` [H, W, 3] at a random position, mirrored left-right half of the time."""
  top = rng.integers(image.shape[0] - size + 1)
  left = rng.integers(image.shape[1] - size + 1)
  crop = image[top:top + size, left:left + size]
  return crop[:, ::-1] if rng.integers(2) else crop


class SourceCrops:
  """PhotoCrops' batches from any image input (`data/inputs.py`), read as they are drawn (nothing held in memory):
  per row a random input, scale, crop position and flip, a pure function of (seed, step, process). Inputs that are
  not images are redrawn; `eval_images` are the centre squares of the first `num_eval` images."""

  MAX_DRAWS = 100  # consecutive unusable inputs before giving up

  def __init__(self, source, size: int, seed: int, scales=SCALES, num_eval: int = 32):
    if len(source) == 0:
      raise ValueError("the VQ training source has no inputs")
    self.source, self.size, self.seed, self.scales = source, size, seed, scales
    self.centres = np.stack(list(itertools.islice(self._images(range(len(source)), size), num_eval)))

  def _images(self, indices, side: int, crop: float | None = 1.0):
    """Prepared images of the inputs `indices` in order, unusable ones left out (logged)."""
    for i in indices:
      try:
        _, _, parts = self.source.entry(i)
        data = next(value for name, value in parts if name == "image")
        yield images_lib.prepare(data, side, crop=crop)[0]
      except (images_lib.Skip, StopIteration, OSError, ValueError, KeyError) as e:
        logging.warning("VQ training skips input %d: %s", i, e)

  def batch(self, step: int, batch_size: int, process_index: int = 0) -> np.ndarray:
    rng = np.random.default_rng((self.seed, step, process_index))
    out = np.empty((batch_size, self.size, self.size, 3), np.uint8)
    for row in range(batch_size):
      for _ in range(self.MAX_DRAWS):
        side = int(round(self.size * self.scales[rng.integers(len(self.scales))]))
        image = next(self._images([int(rng.integers(len(self.source)))], side, crop=None), None)
        if image is not None:
          break
      else:
        raise ValueError(f"{self.MAX_DRAWS} inputs in a row could not be read as images")
      out[row] = random_crop(image, self.size, rng)
    return out

  def eval_images(self) -> np.ndarray:
    return self.centres
