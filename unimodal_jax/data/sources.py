"""Data sources chosen by config: random-access record sources, how each record becomes a `Document`, and
how to name a record in an error. Reading order, sharding and mixing are `pipeline`'s job.

Kinds: "shards" (ArrayRecord files of `documents` records, a glob), "tfds" (a TFDS dataset prepared in
array_record format, read through `tfds.data_source` / `builder_from_directory` without TensorFlow: each
example's int32 `text_feature` [n] and `image_feature` [h, w] form an image_text_pair).
"""
import dataclasses
from collections.abc import Sequence

import grain
import numpy as np
from etils import epath

from unimodal_jax import extras
from unimodal_jax.data import documents

KINDS = ("shards", "tfds")
INGEST_PLAN_FILE = "ingest_plan.json"  # written by an ingest command (ingest/shards.py) before its first shard
INGEST_DONE_FILE = "ingest_done.json"  # ... and after its last


@dataclasses.dataclass(frozen=True)
class ShardRecords:
  """Parses ArrayRecord records; names a global record index by its file and index in that file."""
  paths: tuple[str, ...]

  def document(self, record: bytes, where: str) -> documents.Document:
    return documents.decode_document(record, where)

  def locate(self, index: int) -> str:
    ends = np.cumsum([len(grain.sources.ArrayRecordDataSource([p])) for p in self.paths])
    i = int(np.searchsorted(ends, index, side="right"))
    return f"{self.paths[i]} record {index - (ends[i - 1] if i else 0)}"


@dataclasses.dataclass(frozen=True)
class TfdsPairs:
  """Turns a TFDS example (a dict of numpy features) into an image_text_pair."""
  dataset: str  # for errors: the dataset name or builder directory, and split
  text_feature: str
  image_feature: str

  def document(self, example, where: str) -> documents.Document:
    try:
      text, image = example[self.text_feature], example[self.image_feature]
    except (KeyError, TypeError) as e:
      raise ValueError(f"{where}: TFDS example lacks feature {e} (data.sources.*.text_feature / image_feature)") from e
    if not (isinstance(text, np.ndarray) and isinstance(image, np.ndarray) and text.dtype == image.dtype == np.int32
            and text.ndim == 1 and image.ndim == 2):
      raise ValueError(f"{where}: TFDS features must be int32 text [n] and image [h, w], got "
                       f"{getattr(text, 'dtype', type(text))} {np.shape(text)} and "
                       f"{getattr(image, 'dtype', type(image))} {np.shape(image)}")
    return documents.Document("image_text_pair", (text, image))

  def locate(self, index: int) -> str:
    return f"{self.dataset} record {index}"


@dataclasses.dataclass(frozen=True)
class Unreadable:
  """A record whose bytes could not be read (e.g. a corrupt ArrayRecord chunk); the bad-record policy decides."""
  error: Exception


class GuardedRecords:
  """Random access to a source's records where a failed read yields `Unreadable`, naming the record, not a raise."""

  def __init__(self, records, parser):
    self._records, self._parser = records, parser

  def __len__(self) -> int:
    return len(self._records)

  def __getitem__(self, index: int):
    try:
      return self._records[index]
    except Exception as e:  # noqa: BLE001 -- riegeli, tfds and OS errors alike
      where = self._parser.locate(index % len(self._records))
      return Unreadable(ValueError(f"{where}: cannot be read ({type(e).__name__}: {str(e)[:300]})"))


@dataclasses.dataclass(frozen=True)
class Source:
  name: str  # the key under data.sources ("" for the single data.source)
  records: object  # random access: len() and [index]
  parser: ShardRecords | TfdsPairs
  weight: float


def glob_files(pattern: str) -> list[str]:
  """Sorted non-hidden files matching `pattern` on any filesystem etils.epath knows (local, gs://bucket/dir/*)."""
  path = epath.Path(pattern)
  anchor = path
  while any(c in anchor.name for c in "*?["):
    anchor = anchor.parent
  if anchor == path:
    return [str(path)] if path.is_file() else []
  found = anchor.glob(str(path.relative_to(anchor)))
  return sorted(str(p) for p in found if not p.name.startswith("."))


def shard_paths(pattern: str, key: str) -> list[str]:
  """Sorted files matching `pattern` (a directory means its *.array_record* files); `key` names the config entry.

  A directory that an ingest command began but did not finish (its plan without its done file) is refused.
  """
  directory = epath.Path(pattern)
  if directory.is_dir():
    if (directory / INGEST_PLAN_FILE).exists() and not (directory / INGEST_DONE_FILE).exists():
      raise ValueError(f"config.{key}={pattern!r}: the ingest command writing this directory has not finished (no "
                       f"{INGEST_DONE_FILE}); rerun it to complete the shards")
    pattern = str(directory / "*.array_record*")
  paths = glob_files(pattern)
  if not paths:
    raise FileNotFoundError(f"config.{key}={pattern!r} matches no ArrayRecord shards")
  return paths


def open_shards(paths: Sequence[str]) -> grain.sources.ArrayRecordDataSource:
  """The ArrayRecord files as one record source; a file that cannot be opened (missing, truncated, not ArrayRecord)
  is named in the error."""
  try:
    return grain.sources.ArrayRecordDataSource(list(paths))
  except Exception:  # riegeli reports a truncated file without its name
    for path in paths:
      try:
        grain.sources.ArrayRecordDataSource([path])
      except Exception as file_error:  # noqa: BLE001
        raise ValueError(f"{path}: not a readable ArrayRecord file ({type(file_error).__name__}: "
                         f"{str(file_error)[:300]})") from file_error
    raise


def shards_source(name: str, paths: Sequence[str], weight: float = 1.0) -> Source:
  paths = tuple(paths)
  parser = ShardRecords(paths)
  return Source(name, GuardedRecords(open_shards(paths), parser), parser, weight)


def tfds_source(name: str, entry) -> Source:
  tfds = extras.require("tensorflow_datasets", "a tfds data source")  # local: importing tfds costs ~1 s

  if entry.get("path"):
    records = tfds.builder_from_directory(entry.path).as_data_source(split=entry.split)
    dataset = f"tfds {entry.path} [{entry.split}]"
  else:
    records = tfds.data_source(entry.tfds_name, split=entry.split, data_dir=entry.get("data_dir") or None)
    dataset = f"tfds {entry.tfds_name} [{entry.split}]"
  parser = TfdsPairs(dataset, entry.get("text_feature", "text"), entry.get("image_feature", "image"))
  return Source(name, GuardedRecords(records, parser), parser, float(entry.weight))


def from_config(config, paths: Sequence[str] | None = None) -> list[Source]:
  """The sources of a run: `paths` (shards of data.source 'embedded' or 'shards'), or the entries of
  data.sources (data.source='mixture'), in sorted name order."""
  if config.data.source != "mixture":
    if not paths:
      raise ValueError(f"data.source={config.data.source!r} needs the paths of its shards")
    return [shards_source("", paths)]
  out = []
  for name in sorted(config.data.sources):
    entry = config.data.sources[name]
    key = f"data.sources.{name}"
    if entry.kind == "shards":
      out.append(shards_source(name, shard_paths(entry.path, f"{key}.path"), float(entry.weight)))
    elif entry.kind == "tfds":
      out.append(tfds_source(name, entry))
    else:
      raise ValueError(f"config.{key}.kind={entry.kind!r} is not one of {KINDS}")
  return out
