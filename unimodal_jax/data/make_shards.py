"""`unimodal-make-shards`: JSONL documents or image-caption folders -> ArrayRecord shards of `documents` records.

  unimodal-make-shards --config configs/demo.py --config.vq.tokenizer_path=DATA/codebook.npz \
      --text_tokenizer DATA/tokenizer.json --jsonl docs.jsonl --out_dir shards/ [--num_shards 8]
  unimodal-make-shards ... --image_folder photos/   # every photos/x.jpg (or .png) with its caption photos/x.txt

A JSONL line is {"text": str, "image": path} (an image_text_pair) or {"segments": [{"text": str} |
{"image": path}, ...]} (interleaved; text only: a text document); image paths are local files, relative to
the JSONL file. Images are centre-cropped to a square, resized to vq.image_size and tokenized by the run's
image tokenizer (`vq/codes.py`) in batches; text by the run's text tokenizer.
"""
import glob
import json
import os
from collections.abc import Iterator

import numpy as np
import tqdm

from unimodal_jax.data import documents
from unimodal_jax.data import tokenizer as tokenizer_lib
from unimodal_jax.data import vocab as vocab_lib
from unimodal_jax.vq import codes
from unimodal_jax.vq import images as images_lib

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")

def load_image(path: str, image_size: int) -> np.ndarray:
  """Any image file -> uint8 [image_size, image_size, 3] (`vq/images.prepare`: the centred square, resized)."""
  with open(path, "rb") as f:
    return images_lib.prepare(f.read(), image_size)[0]


def jsonl_entries(path: str) -> Iterator[tuple[str, list[tuple[str, str]], str]]:
  """(kind, [("text", str) | ("image", absolute path)], "file:line") per JSONL line."""
  base = os.path.dirname(os.path.abspath(path))
  with open(path) as f:
    for number, line in enumerate(f, 1):
      if not line.strip():
        continue
      where = f"{path}:{number}"
      try:
        entry = json.loads(line)
        if "segments" in entry:
          parts = [next(iter(s.items())) for s in entry["segments"]]
        else:
          parts = [("text", entry["text"]), ("image", entry["image"])]
      except (json.JSONDecodeError, KeyError, TypeError, AttributeError, StopIteration) as e:
        raise ValueError(f"{where}: expected {{'text', 'image'}} or {{'segments': [...]}}, got {line[:80]!r}") from e
      if any(name not in ("text", "image") for name, _ in parts):
        raise ValueError(f"{where}: segments must be {{'text': str}} or {{'image': path}}")
      parts = [(n, os.path.join(base, v) if n == "image" else v) for n, v in parts]
      images = sum(n == "image" for n, _ in parts)
      kind = "image_text_pair" if "segments" not in entry else ("interleaved" if images else "text")
      yield kind, parts, where


def folder_images(folder: str) -> list[str]:
  images = sorted(p for p in glob.glob(os.path.join(folder, "*")) if p.lower().endswith(IMAGE_EXTENSIONS))
  if not images:
    raise ValueError(f"--image_folder={folder}: no images ({', '.join(IMAGE_EXTENSIONS)})")
  return images


def folder_entries(folder: str) -> Iterator[tuple[str, list[tuple[str, str]], str]]:
  """One image_text_pair per image file with a caption file of the same stem, in sorted order."""
  for path in folder_images(folder):
    caption_path = os.path.splitext(path)[0] + ".txt"
    if not os.path.exists(caption_path):
      raise ValueError(f"{path}: no caption file {caption_path}")
    with open(caption_path) as f:
      yield "image_text_pair", [("text", f.read().strip()), ("image", path)], path


def tokenize(entries, text_tokenizer, image_tokenizer, image_size: int, images_per_batch: int):
  """Documents from entries, tokenizing images `images_per_batch` at a time."""
  pending, pixels = [], []

  def flush():
    image_codes = iter(image_tokenizer(np.stack(pixels)) if pixels else [])
    for kind, parts in pending:
      segments = tuple(next(image_codes) if n == "image" else text_tokenizer.encode(v) for n, v in parts)
      yield documents.Document(kind, segments)
    pending.clear()
    pixels.clear()

  for kind, parts, where in entries:
    for name, value in parts:
      if name == "image":
        try:
          pixels.append(load_image(value, image_size))
        except (OSError, ValueError, images_lib.Skip) as e:
          raise ValueError(f"{where}: cannot read image {value}: {e}") from e
    pending.append((kind, parts))
    if len(pixels) >= images_per_batch:
      yield from flush()
  yield from flush()


def make_shards(config, text_tokenizer_path: str, entries, out_dir: str, num_shards: int, prefix: str,
                images_per_batch: int = 64, total: int | None = None) -> list[str]:
  """Writes the documents of `entries` round-robin into `num_shards` files; returns their paths."""
  vocab = vocab_lib.from_config(config)
  text_tokenizer = tokenizer_lib.TextTokenizer.load(text_tokenizer_path, vocab)
  image_tokenizer = codes.image_tokenizer(config)
  grid = config.vq.image_size // config.vq.patch_size
  os.makedirs(out_dir, exist_ok=True)
  paths = [os.path.join(out_dir, f"{prefix}-{i:05d}-of-{num_shards:05d}.array_record") for i in range(num_shards)]
  docs = tokenize(entries, text_tokenizer, image_tokenizer, config.vq.image_size, images_per_batch)
  with documents.ShardWriter(paths) as writer:
    for doc in tqdm.tqdm(docs, total=total, unit="doc", desc="make-shards"):
      documents.check_document(doc, vocab, grid, config.data.max_document_tokens, f"document {writer.count}")
      writer.write(doc)
  return paths
