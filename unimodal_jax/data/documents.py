"""On-disk format of documents (version 2): one ArrayRecord record per interleaved text/image document.

A record is `flax.serialization.msgpack_serialize(fields)` with
  fields = {"version": 2, "kind": str, "segments": [{"text": int32 [n]} | {"image": int32 [h, w]}, ...]}
`text` holds text-tokenizer ids (no <bos>/<eos>: the reader frames the document); `image` holds the VQ code
grid of one image, row-major. `kind` is "text", "interleaved" (rendered as stored) or "image_text_pair"
(exactly one text and one image; the task stage picks their order). Version 1 records (a rendered token
stream) are rejected: they carry no segments to check or format. This module parses; `check_document`
decides whether a parsed document fits the run's vocabulary; nothing here knows about packing.

Decoding is strict; refused (each error names the record): bytes that are not msgpack; a top level that is not a
map; a version that is not the integer 2 (1 gets a message on how to rebuild; 2.0, True, "2", [2], an array or a
numpy scalar are refused); an unknown kind; segments that are not a list of one-key maps {"text"|"image": array};
an array whose stored shape has a negative, non-integer or inconsistent dimension (its byte count must equal the
shape's), a dtype other than int32, or the wrong number of dimensions.
"""
import dataclasses
import math
from collections.abc import Iterable, Sequence

import flax.serialization
import msgpack
import numpy as np
from array_record.python import array_record_module

from unimodal_jax.config import ARRAY_RECORD_WRITER_OPTIONS
from unimodal_jax.data import vocab as vocab_lib

FORMAT_VERSION = 2
KINDS = ("text", "interleaved", "image_text_pair")


@dataclasses.dataclass(frozen=True)
class Document:
  kind: str  # one of KINDS
  segments: tuple[np.ndarray, ...]  # int32: [n] text ids (1-D) or [h, w] image codes (2-D), in document order


def is_image(segment: np.ndarray) -> bool:
  return segment.ndim == 2


def encode_document(doc: Document) -> bytes:
  """Raises on a malformed document, so a writer never produces a record its readers reject."""
  if doc.kind not in KINDS:
    raise ValueError(f"document kind {doc.kind!r} is not one of {KINDS}")
  segments = []
  for s in doc.segments:
    s = np.asarray(s)
    if s.dtype != np.int32 or s.ndim not in (1, 2):
      raise ValueError(f"{doc.kind} document segments must be int32 [n] text or [h, w] image, got {s.dtype} {s.shape}")
    segments.append({"image" if is_image(s) else "text": s})
  return flax.serialization.msgpack_serialize({"version": FORMAT_VERSION, "kind": doc.kind, "segments": segments})


def _segment(entry, where: str, i: int) -> np.ndarray:
  if not isinstance(entry, dict) or len(entry) != 1 or not ({"text", "image"} & set(entry)):
    raise ValueError(f"{where}: segment {i} must be {{'text': ids}} or {{'image': codes}}, got {entry!r:.80}")
  (name, value), = entry.items()
  ndim = 2 if name == "image" else 1
  if not isinstance(value, np.ndarray) or value.dtype != np.int32 or value.ndim != ndim:
    got = f"{value.dtype} {value.shape}" if isinstance(value, np.ndarray) else type(value).__name__
    raise ValueError(f"{where}: segment {i} ({name}) must be int32 with {ndim} dims, got {got}")
  return value


class _BadArray(ValueError):
  pass


def _strict_array(code: int, data: bytes):
  """flax's msgpack ndarray extension, refusing shapes that numpy would quietly reinterpret (e.g. -1)."""
  if code != 1:  # flax's _MsgpackExtType.ndarray; scalars and complex numbers are not document fields
    return msgpack.ExtType(code, data)
  shape, dtype_name, buffer = msgpack.unpackb(data, raw=True)
  if not isinstance(shape, (list, tuple)) or not all(type(d) is int and d >= 0 for d in shape):
    raise _BadArray(f"array shape {shape!r} must be non-negative integers")
  try:
    dtype = np.dtype(dtype_name.decode() if isinstance(dtype_name, bytes) else dtype_name)
  except TypeError as e:
    raise _BadArray(f"array dtype {dtype_name!r} is not a numpy dtype") from e
  if not isinstance(buffer, bytes) or len(buffer) != math.prod(shape) * dtype.itemsize:
    raise _BadArray(f"array of shape {tuple(shape)} {dtype} needs {math.prod(shape) * dtype.itemsize} bytes, the "
                    f"record holds {len(buffer) if isinstance(buffer, bytes) else type(buffer).__name__}")
  return np.frombuffer(buffer, dtype=dtype).reshape(shape)


def decode_document(record: bytes, where: str = "record") -> Document:
  """Parses one record; `where` (e.g. "train-00001.array_record record 12") prefixes every error."""
  try:
    fields = msgpack.unpackb(record, ext_hook=_strict_array, raw=False, strict_map_key=False)
  except _BadArray as e:
    raise ValueError(f"{where}: {e}") from e
  except Exception as e:  # msgpack raises several unrelated types on garbage
    raise ValueError(f"{where}: not a msgpack document record ({type(e).__name__}: {e})") from e
  if not isinstance(fields, dict):
    raise ValueError(f"{where}: a document record is a map, got {type(fields).__name__}")
  version = fields.get("version")
  if type(version) is not int:
    raise ValueError(f"{where}: document format version must be the integer {FORMAT_VERSION}, got "
                     f"{type(version).__name__} {version!r:.40}")
  if version == 1:
    raise ValueError(f"{where}: document format version 1 (a rendered token stream) is no longer read; rewrite the "
                     f"shards as version {FORMAT_VERSION} (unimodal-make-shards, or delete an embedded dataset's "
                     f"manifest.json to rebuild it)")
  if version != FORMAT_VERSION:
    raise ValueError(f"{where}: document format version {version!r}, expected {FORMAT_VERSION}")
  kind, segments = fields.get("kind"), fields.get("segments")
  if kind not in KINDS:
    raise ValueError(f"{where}: document kind {kind!r} is not one of {KINDS}")
  if not isinstance(segments, list):
    raise ValueError(f"{where}: segments must be a list, got {type(segments).__name__}")
  return Document(kind=kind, segments=tuple(_segment(s, where, i) for i, s in enumerate(segments)))


def check_document(doc: Document, vocab: vocab_lib.Vocab, image_grid: int, max_tokens: int, where: str) -> None:
  """Raises ValueError (prefixed by `where`) unless `doc` renders to a trainable token stream for `vocab`.

  Text ids must lie in [3, vocab.text_size) (the special ids are the reader's to place), images must be
  image_grid x image_grid codes in [0, vocab.num_image_codes), the document non-empty and, rendered, at most
  `max_tokens` long (data.max_document_tokens); an image_text_pair has exactly one text and one image.
  """
  length, images = 2, 0
  for i, s in enumerate(doc.segments):
    if s.size == 0:
      raise ValueError(f"{where}: segment {i} is empty")
    if is_image(s):
      images += 1
      if s.shape != (image_grid, image_grid):
        raise ValueError(f"{where}: segment {i} is an image of {s.shape[0]} x {s.shape[1]} codes, expected "
                         f"{image_grid} x {image_grid} (vq.image_size // vq.patch_size)")
      low, high, limit = 0, vocab.num_image_codes, "vq.num_codes"
      length += s.size + 2
    else:
      low, high, limit = len(vocab_lib.TEXT_SPECIAL_TOKENS), vocab.text_size, "vocab.text_size"
      length += s.size
    lo, hi = int(s.min()), int(s.max())
    if lo < low or hi >= high:
      raise ValueError(f"{where}: segment {i} ({'image' if is_image(s) else 'text'}) has ids in [{lo}, {hi}], "
                       f"outside [{low}, {high}) ({limit}={high})")
  if not doc.segments:
    raise ValueError(f"{where}: empty document (no segments)")
  if length > max_tokens:
    raise ValueError(f"{where}: document of {length} tokens exceeds data.max_document_tokens={max_tokens}")
  if doc.kind == "image_text_pair" and (len(doc.segments) != 2 or images != 1):
    raise ValueError(f"{where}: an image_text_pair needs one text and one image segment, got "
                     f"{len(doc.segments) - images} text and {images} image segments")


def render(segments: Sequence[np.ndarray], vocab: vocab_lib.Vocab) -> np.ndarray:
  """The unified token stream: <bos>, each text segment's ids or <boi> codes <eoi>, <eos> (int32 [n])."""
  parts = [np.array([vocab_lib.BOS_ID], np.int32)]
  for s in segments:
    if is_image(s):
      parts += [np.array([vocab.boi_id], np.int32), s.reshape(-1) + np.int32(vocab.image_code_offset),
                np.array([vocab.eoi_id], np.int32)]
    else:
      parts.append(s)
  parts.append(np.array([vocab_lib.EOS_ID], np.int32))
  return np.concatenate(parts)


class ShardWriter:
  """Writes documents round-robin over ArrayRecord files, in order; a context manager."""

  def __init__(self, paths: Sequence[str]):
    self._writers = [array_record_module.ArrayRecordWriter(p, ARRAY_RECORD_WRITER_OPTIONS) for p in paths]
    self.count = 0

  def write(self, doc: Document) -> None:
    self._writers[self.count % len(self._writers)].write(encode_document(doc))
    self.count += 1

  def close(self) -> None:
    for w in self._writers:
      w.close()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()


def write_shards(documents: Iterable[Document], paths: Sequence[str]) -> None:
  """Writes document i to paths[i % len(paths)], in order."""
  with ShardWriter(paths) as writer:
    for doc in documents:
      writer.write(doc)
