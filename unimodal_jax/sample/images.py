"""Generated images: the code grids inside sampled token rows, and PNG grids of their pixels."""
import numpy as np
from etils import epath
from PIL import Image

from unimodal_jax.data import vocab as vocab_lib


def images_in(tokens, vocab: vocab_lib.Vocab, grid: tuple[int, int]) -> list[np.ndarray]:
  """Each complete image (<boi>, h*w codes, <eoi>) in a row of ids, as int32 codes [h, w], in order."""
  tokens, (h, w) = np.asarray(tokens).reshape(-1), grid
  found = []
  for start in np.flatnonzero(tokens == vocab.boi_id):
    body = tokens[start + 1:start + 2 + h * w]
    if len(body) == h * w + 1 and vocab.is_image(body[:-1]).all() and body[-1] == vocab.eoi_id:
      found.append(vocab.code_of(body[:-1]).reshape(h, w).astype(np.int32))
  return found


def grid(images: np.ndarray, columns: int = 0) -> np.ndarray:
  """uint8 [n, H, W, 3] -> one uint8 [rows * (H + 2) - 2, columns * (W + 2) - 2, 3] image, 2 px white gaps; columns
  0 = ceil(sqrt(n))."""
  n, h, w, ch = images.shape
  columns = columns or int(np.ceil(np.sqrt(n)))
  rows = -(-n // columns)
  out = np.full((rows * (h + 2) - 2, columns * (w + 2) - 2, ch), 255, np.uint8)
  for i, image in enumerate(images):
    r, c = divmod(i, columns)
    out[r * (h + 2):r * (h + 2) + h, c * (w + 2):c * (w + 2) + w] = image
  return out


def write_png(image: np.ndarray, path) -> str:
  """uint8 [H, W, 3] as a PNG at `path` (local or any etils.epath location); returns the path."""
  with epath.Path(path).open("wb") as f:
    Image.fromarray(np.asarray(image, np.uint8)).save(f, format="PNG")
  return str(path)
