"""Training images for the VQGAN: the scikit-image sample photographs as random square crops with flips.

Offline (the photos ship inside scikit-image); batches are a pure function of (seed, step, process): no iterator state.
"""
import numpy as np

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
      top = rng.integers(image.shape[0] - self.size + 1)
      left = rng.integers(image.shape[1] - self.size + 1)
      crop = image[top:top + self.size, left:left + self.size]
      out[row] = crop[:, ::-1] if rng.integers(2) else crop
    return out

  def eval_images(self) -> np.ndarray:
    """The centre square of each photo (the whole short side), prepared as the tokenizer's inputs are: a fixed set
    for PSNR and figures."""
    return self.centres
