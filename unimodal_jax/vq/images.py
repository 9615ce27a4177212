"""Image sources for the tokenizer (a folder, a TFDS data source, ArrayRecord of encoded images) and the one
decoding step that turns any input into uint8 RGB at the tokenizer's resolution, or a reason to skip it.

Nothing here knows about codes or shards.
"""
import glob
import io
import os
import warnings

import numpy as np
from PIL import Image

from unimodal_jax import extras

SKIP_REASONS = ("not_an_image", "corrupt", "tiny", "huge")


class Skip(Exception):
  """An input that cannot become an image; `reason` is one of SKIP_REASONS."""

  def __init__(self, reason: str, detail: str):
    super().__init__(f"{reason}: {detail}")
    self.reason = reason


class FolderSource:
  """Every regular file under `root` (recursively, sorted by relative path; hidden files excluded)."""

  def __init__(self, root: str):
    if not os.path.isdir(root):
      raise FileNotFoundError(f"--images: {root} is not a directory")
    paths = [p for p in glob.glob(os.path.join(root, "**", "*"), recursive=True) if os.path.isfile(p)]
    self.paths = sorted(p for p in paths if not os.path.basename(p).startswith("."))

  def __len__(self):
    return len(self.paths)

  def name(self, i: int) -> str:
    return self.paths[i]

  def load(self, i: int):
    with open(self.paths[i], "rb") as f:
      return f.read()


class ArrayRecordSource:
  """Records that are encoded image files (PNG, JPEG, ...), over the files matching a glob, in sorted order."""

  def __init__(self, pattern: str):
    import grain
    self.paths = sorted(glob.glob(pattern))
    if not self.paths:
      raise FileNotFoundError(f"--array_record: no files match {pattern}")
    self.source = grain.sources.ArrayRecordDataSource(self.paths)

  def __len__(self):
    return len(self.source)

  def name(self, i: int) -> str:
    return f"{os.path.dirname(self.paths[0])}/record {i}"

  def load(self, i: int):
    return self.source[i]


class TfdsSource:
  """`tfds.data_source(name, split)`, or a prepared dataset's directory (`builder_from_directory`); the
  `image_key` feature is encoded bytes or a uint8 array. No TensorFlow needed for array_record datasets."""

  def __init__(self, name: str, split: str, data_dir: str | None, image_key: str):
    tfds = extras.require("tensorflow_datasets", "a TFDS image source")
    self.label = f"{name}:{split}"
    if os.path.isdir(name):
      self.source = tfds.builder_from_directory(name).as_data_source(split=split)
    else:
      self.source = tfds.data_source(name, split=split, data_dir=data_dir or None)
    self.image_key = image_key

  def __len__(self):
    return len(self.source)

  def name(self, i: int) -> str:
    return f"{self.label}[{i}]"

  def load(self, i: int):
    example = self.source[i]
    if self.image_key not in example:
      raise KeyError(f"--image_key={self.image_key!r} is not a feature of {self.label}: {sorted(example)}")
    return example[self.image_key]


def _array_image(array: np.ndarray) -> Image.Image:
  """A decoded image array (bool, uint8/16, or float in [0, 1]; gray, gray+alpha, RGB or RGBA) as a PIL image."""
  if array.ndim == 3 and array.shape[-1] == 1:
    array = array[..., 0]
  if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (2, 3, 4)):
    raise Skip("not_an_image", f"array of shape {array.shape}")
  if array.dtype == bool:
    array = array.astype(np.uint8) * 255
  elif np.issubdtype(array.dtype, np.floating):  # skimage's convention: floats lie in [0, 1]
    array = np.clip(np.rint(array * 255.0), 0, 255).astype(np.uint8)
  elif array.dtype == np.uint16:
    array = np.rint(array / 257.0).astype(np.uint8)
  elif array.dtype != np.uint8:
    raise Skip("not_an_image", f"array of dtype {array.dtype}")
  if array.ndim == 3 and array.shape[-1] == 2:  # gray + alpha
    return Image.fromarray(array, "LA")
  return Image.fromarray(array)


def _open(data, min_size: int, max_pixels: int) -> Image.Image:
  if isinstance(data, np.ndarray):
    image = _array_image(data)
  else:
    try:
      with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        image = Image.open(io.BytesIO(bytes(data)))
    except Image.UnidentifiedImageError as e:
      raise Skip("not_an_image", str(e)) from e
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
      raise Skip("huge", str(e)) from e
  w, h = image.size
  if w * h > max_pixels:
    raise Skip("huge", f"{w}x{h} pixels > max_pixels={max_pixels}")
  if min(w, h) < min_size:
    raise Skip("tiny", f"{w}x{h}, shorter side < min_size={min_size}")
  try:
    image.load()
  except (OSError, SyntaxError, ValueError) as e:  # truncated or malformed data
    raise Skip("corrupt", str(e)) from e
  return image


def _to_rgb(image: Image.Image) -> tuple[Image.Image, str]:
  """RGB, with alpha composited on white; returns the mode it converted from ('' when already RGB)."""
  mode = image.mode
  if mode == "RGB":
    return image, ""
  if mode in ("I;16", "I;16B", "I;16L", "I"):
    array = np.asarray(image, np.float64)
    scale = 255.0 / 65535.0 if mode.startswith("I;16") or array.max() > 255 else 1.0
    image = Image.fromarray(np.clip(np.rint(array * scale), 0, 255).astype(np.uint8))
  elif mode == "F":
    image = Image.fromarray(np.clip(np.rint(np.asarray(image) * (255.0 if np.max(image) <= 1 else 1.0)),
                                    0, 255).astype(np.uint8))
  if image.mode == "P":
    image = image.convert("RGBA")
  if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
    rgba = image.convert("RGBA")
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    image = Image.alpha_composite(white, rgba)
  return image.convert("RGB"), mode


def prepare(data, resolution: int, *, crop: float | None = 1.0, min_size: int = 1,
            max_pixels: int = 2 ** 31) -> tuple[np.ndarray, str]:
  """The one image preprocessing of the package: encoded bytes or a decoded array -> (uint8 [H, W, 3], the mode it
  was converted from or '').

  Decode, convert to RGB (alpha over white, 16-bit and float scaled), then with `crop` the centred square of side
  crop * the shorter side resized to resolution x resolution; with crop=None the whole image resized so that its
  shorter side is `resolution` (VQ training takes random crops of that). Resizing is bicubic (antialiased when
  shrinking). Raises Skip for non-images, corrupt data, tiny or huge images.
  """
  image, converted = _to_rgb(_open(data, min_size, max_pixels))
  w, h = image.size
  if crop is not None:
    side = int(round(min(w, h) * crop))
    left, top = (w - side) // 2, (h - side) // 2
    image = image.crop((left, top, left + side, top + side))
    w = h = side
  scale = resolution / min(w, h)
  size = (max(resolution, round(w * scale)), max(resolution, round(h * scale)))
  if size != (w, h):
    image = image.resize(size, Image.Resampling.BICUBIC, reducing_gap=3.0)
  return np.asarray(image, np.uint8), converted
