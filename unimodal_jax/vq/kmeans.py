"""K-means patch codebook: the fast baseline image tokenizer (numpy only, no training loop).

Each non-overlapping patch_size x patch_size RGB patch becomes the id of its nearest codebook entry; decoding
pastes the entries back. It knows nothing about the unified vocabulary (that is `data.vocab.Vocab`).
"""
import dataclasses
import io

import numpy as np
from etils import epath

_CHUNK = 4096  # patches per distance matrix in `_nearest`, to bound memory


def _check_images(images, image_size=None) -> np.ndarray:
  images = np.asarray(images)
  if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
    raise ValueError(f"images must be uint8 [N, H, W, 3], got {images.dtype} {images.shape}")
  if images.shape[1] != images.shape[2]:
    raise ValueError(f"images must be square, got H x W = {images.shape[1]} x {images.shape[2]}")
  if image_size is not None and images.shape[1] != image_size:
    raise ValueError(f"images must be {image_size} x {image_size} (vq.image_size), got {images.shape[1:3]}")
  return images


def _to_patches(images: np.ndarray, patch_size: int) -> np.ndarray:
  """[N, H, W, 3] -> [N, h, w, patch*patch*3] float32, patches in row-major grid order."""
  n, size = images.shape[0], images.shape[1]
  g = size // patch_size
  x = images.reshape(n, g, patch_size, g, patch_size, 3).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(n, g, g, patch_size * patch_size * 3).astype(np.float32)


def _from_patches(patches: np.ndarray, patch_size: int) -> np.ndarray:
  n, g = patches.shape[0], patches.shape[1]
  x = patches.reshape(n, g, g, patch_size, patch_size, 3).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(n, g * patch_size, g * patch_size, 3)


def _nearest(points: np.ndarray, centers: np.ndarray):
  """Index of the nearest center for each point, and the squared distance to it.

  float64: in float32 the expanded |x|^2 - 2x.c + |c|^2 loses ~1 unit of a distance of ~1e7 (pixel units).
  """
  centers = centers.astype(np.float64)
  center_sq = np.sum(centers * centers, axis=1)
  ids = np.empty(len(points), np.int32)
  dist = np.empty(len(points), np.float32)
  for start in range(0, len(points), _CHUNK):
    x = points[start:start + _CHUNK].astype(np.float64)
    d = center_sq[None, :] - 2.0 * (x @ centers.T)
    ids[start:start + _CHUNK] = np.argmin(d, axis=1)
    dist[start:start + _CHUNK] = np.maximum(np.min(d, axis=1) + np.sum(x * x, axis=1), 0.0)
  return ids, dist


def _kmeans_plus_plus(points: np.ndarray, num_codes: int, rng: np.random.Generator) -> np.ndarray:
  centers = np.empty((num_codes, points.shape[1]), np.float32)
  centers[0] = points[rng.integers(len(points))]
  dist = np.sum((points - centers[0]) ** 2, axis=1)
  for k in range(1, num_codes):
    total = float(dist.sum())
    i = rng.choice(len(points), p=dist / total) if total > 0 else rng.integers(len(points))
    centers[k] = points[i]
    dist = np.minimum(dist, np.sum((points - centers[k]) ** 2, axis=1))
  return centers


def _lloyd(points: np.ndarray, centers: np.ndarray, iters: int) -> np.ndarray:
  ids = None
  for _ in range(iters):
    new_ids, dist = _nearest(points, centers)
    if ids is not None and np.array_equal(new_ids, ids):
      break
    ids = new_ids
    counts = np.bincount(ids, minlength=len(centers))
    used = counts > 0
    order = np.argsort(ids, kind="stable")
    starts = (np.cumsum(counts) - counts)[used]
    sums = np.add.reduceat(points[order].astype(np.float64), starts, axis=0)
    centers = centers.copy()
    centers[used] = (sums / counts[used, None]).astype(np.float32)
    # An empty code takes the worst-fitted patches: deterministic, and keeps every code in use.
    empty = np.flatnonzero(~used)
    centers[empty] = points[np.argsort(-dist, kind="stable")[:len(empty)]]
  return centers


@dataclasses.dataclass(frozen=True)
class KMeansTokenizer:
  """A codebook of `num_codes` flattened patches (pixel units 0..255) for image_size-square RGB images."""

  codebook: np.ndarray  # float32 [num_codes, patch_size * patch_size * 3]
  patch_size: int
  image_size: int

  def __post_init__(self):
    if self.image_size % self.patch_size:
      raise ValueError(f"vq.image_size={self.image_size} is not a multiple of vq.patch_size={self.patch_size}")
    dim = self.patch_size * self.patch_size * 3
    if self.codebook.ndim != 2 or self.codebook.shape[1] != dim or self.codebook.dtype != np.float32:
      raise ValueError(f"codebook must be float32 [num_codes, {dim}], got {self.codebook.dtype} {self.codebook.shape}")

  @property
  def num_codes(self) -> int:
    return self.codebook.shape[0]

  @property
  def grid_size(self) -> int:
    """Codes per side: an image is grid_size x grid_size codes."""
    return self.image_size // self.patch_size

  @classmethod
  def fit(cls, images, num_codes: int, patch_size: int, seed: int, iters: int = 20) -> "KMeansTokenizer":
    """k-means++ initialisation then Lloyd iterations on all patches of `images`; deterministic for `seed`."""
    images = _check_images(images)
    if images.shape[1] % patch_size:
      raise ValueError(f"image size {images.shape[1]} is not a multiple of vq.patch_size={patch_size}")
    points = _to_patches(images, patch_size).reshape(-1, patch_size * patch_size * 3)
    if len(points) < num_codes:
      raise ValueError(f"vq.num_codes={num_codes} exceeds the {len(points)} patches to fit it on")
    centers = _kmeans_plus_plus(points, num_codes, np.random.default_rng(seed))
    return cls(codebook=_lloyd(points, centers, iters), patch_size=patch_size, image_size=images.shape[1])

  def encode(self, images) -> np.ndarray:
    """uint8 [N, image_size, image_size, 3] -> int32 codes [N, grid, grid] (row-major patch grid)."""
    images = _check_images(images, self.image_size)
    patches = _to_patches(images, self.patch_size)
    ids, _ = _nearest(patches.reshape(-1, patches.shape[-1]), self.codebook)
    return ids.reshape(patches.shape[:3])

  def decode(self, codes) -> np.ndarray:
    """int codes [N, grid, grid] -> uint8 images [N, image_size, image_size, 3]."""
    codes = np.asarray(codes)
    g = self.grid_size
    if codes.ndim != 3 or codes.shape[1:] != (g, g) or not np.issubdtype(codes.dtype, np.integer):
      raise ValueError(f"codes must be integer [N, {g}, {g}], got {codes.dtype} {codes.shape}")
    if codes.size and (codes.min() < 0 or codes.max() >= self.num_codes):
      raise ValueError(f"codes must lie in [0, {self.num_codes}), got [{codes.min()}, {codes.max()}]")
    pixels = _from_patches(self.codebook[codes], self.patch_size)
    return np.clip(np.rint(pixels), 0, 255).astype(np.uint8)

  def save(self, path: str) -> None:
    """To `path`, local or gs://..."""
    with epath.Path(path).open("wb") as f:  # a file object: np.savez would append ".npz" to a bare name
      np.savez(f, codebook=self.codebook, patch_size=self.patch_size, image_size=self.image_size)

  @classmethod
  def load(cls, path: str) -> "KMeansTokenizer":
    with np.load(io.BytesIO(epath.Path(path).read_bytes())) as z:
      missing = {"codebook", "patch_size", "image_size"} - set(z.files)
      if missing:
        raise ValueError(f"{path} is not a k-means codebook: missing {sorted(missing)}")
      return cls(codebook=z["codebook"], patch_size=int(z["patch_size"]), image_size=int(z["image_size"]))
