"""Training images for the VQGAN: the scikit-image sample photographs as random square crops with flips.

Offline (the photos ship inside scikit-image); batches are a pure function of (seed, step, process): no iterator state.
"""
import numpy as np
import skimage

from unimodal_jax.data import embedded

SCALES = (1.0, 1.5, 2.0)  # short side of each pre-resized copy, in multiples of the crop side


def _load_rgb(name: str, index) -> np.ndarray:
  image = getattr(skimage.data, name)()
  return embedded._rgb_float(image if index is None else image[index])


def _resize_short_side(image: np.ndarray, side: int) -> np.ndarray:
  h, w = image.shape[:2]
  factor = min(h, w) // (2 * side)
  if factor > 1:  # box filter first: gaussian anti-aliasing is slow on megapixel photos
    image = skimage.transform.downscale_local_mean(image, (factor, factor, 1))
    h, w = image.shape[:2]
  scale = side / min(h, w)
  shape = (max(side, round(h * scale)), max(side, round(w * scale)))
  out = skimage.transform.resize(image, shape, anti_aliasing=scale < 1)
  return skimage.util.img_as_ubyte(np.clip(out, 0.0, 1.0))


class PhotoCrops:
  """uint8 [B, size, size, 3] batches: a random photo, scale, crop position and horizontal flip per row."""

  def __init__(self, size: int, seed: int, scales=SCALES):
    self.size, self.seed = size, seed
    names = sorted({(name, index) for name, index, _ in embedded.IMAGES}, key=str)
    self.names = [f"{n}[{i}]" if i is not None else n for n, i in names]
    self.copies = [[_resize_short_side(_load_rgb(n, i), int(round(size * s))) for s in scales] for n, i in names]

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
    """The centre crop of each photo at scale 1 (the whole short side): a fixed set for PSNR and figures."""
    out = []
    for copies in self.copies:
      image = copies[0]
      top, left = (image.shape[0] - self.size) // 2, (image.shape[1] - self.size) // 2
      out.append(image[top:top + self.size, left:left + self.size])
    return np.stack(out)
