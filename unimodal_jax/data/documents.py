"""On-disk format of tokenized documents: one ArrayRecord record per document.

A record is `flax.serialization.msgpack_serialize({"version": 1, "kind": str, "tokens": int32 [n]})`:
`tokens` are unified `Vocab` ids, starting with <bos> and ending with <eos>; `kind` names how the document
was built (e.g. "text", "interleaved") and is not used by training. Readers reject any other version.
"""
import dataclasses
import functools
from collections.abc import Sequence

import flax.serialization
import grain
import numpy as np
from array_record.python import array_record_module

FORMAT_VERSION = 1
_WRITER_OPTIONS = "group_size:1"  # one record per chunk: cheap random access for global shuffling


@dataclasses.dataclass(frozen=True)
class Document:
  kind: str
  tokens: np.ndarray  # int32 [n]


def encode_document(doc: Document) -> bytes:
  tokens = np.asarray(doc.tokens)
  if tokens.dtype != np.int32 or tokens.ndim != 1:
    raise ValueError(f"{doc.kind} document tokens must be int32 [n], got {tokens.dtype} {tokens.shape}")
  return flax.serialization.msgpack_serialize({"version": FORMAT_VERSION, "kind": doc.kind, "tokens": tokens})


def decode_document(record: bytes, where: str = "record") -> Document:
  """Parses one record; `where` (e.g. "shard.array_record record 12") prefixes every error."""
  try:
    fields = flax.serialization.msgpack_restore(record)
  except Exception as e:  # msgpack raises several unrelated types on garbage
    raise ValueError(f"{where}: not a msgpack document record ({type(e).__name__}: {e})") from e
  if not isinstance(fields, dict) or fields.get("version") != FORMAT_VERSION:
    version = fields.get("version") if isinstance(fields, dict) else type(fields).__name__
    raise ValueError(f"{where}: document format version {version!r}, expected {FORMAT_VERSION}")
  tokens = fields.get("tokens")
  if not isinstance(tokens, np.ndarray) or tokens.dtype != np.int32 or tokens.ndim != 1:
    got = f"{tokens.dtype} {tokens.shape}" if isinstance(tokens, np.ndarray) else type(tokens).__name__
    raise ValueError(f"{where}: tokens must be int32 [n], got {got}")
  return Document(kind=str(fields.get("kind")), tokens=tokens)


def write_shards(documents: Sequence[Document], paths: Sequence[str]) -> None:
  """Writes document i to paths[i % len(paths)], in order."""
  writers = [array_record_module.ArrayRecordWriter(p, _WRITER_OPTIONS) for p in paths]
  try:
    for i, doc in enumerate(documents):
      writers[i % len(writers)].write(encode_document(doc))
  finally:
    for w in writers:
      w.close()


def _locate(paths: Sequence[str], index: int) -> str:
  """Names global record `index` of ArrayRecordDataSource(paths) as "<file> record <i>"; for errors only."""
  ends = np.cumsum([len(grain.sources.ArrayRecordDataSource([p])) for p in paths])
  i = int(np.searchsorted(ends, index, side="right"))
  return f"{paths[i]} record {index - (ends[i - 1] if i else 0)}"


def _decode_at(paths: Sequence[str], index: int, record: bytes) -> Document:
  try:
    return decode_document(record)
  except ValueError:  # decode again to name the file and record (too slow to locate every record up front)
    return decode_document(record, where=_locate(paths, index))


def read_documents(paths: Sequence[str]) -> grain.MapDataset:
  """A MapDataset of `Document`s over the shards, in file order; errors name the file and record."""
  paths = list(paths)
  source = grain.sources.ArrayRecordDataSource(paths)
  return grain.MapDataset.source(source).map_with_index(functools.partial(_decode_at, paths))
