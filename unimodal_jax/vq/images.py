"""The one decoding step that turns any image input (data/inputs.py reads them) into uint8 RGB at the tokenizer's
resolution, or a reason to skip it.

Nothing here knows about codes or shards.
"""
import io
import warnings

import numpy as np
from PIL import Image


SKIP_REASONS = ("not_an_image", "corrupt", "tiny", "huge")


class Skip(Exception):
  """An input that cannot become an image; `reason` is one of SKIP_REASONS."""

  def __init__(self, reason: str, detail: str):
    super().__init__(f"{reason}: {detail}")
    self.reason = reason


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
