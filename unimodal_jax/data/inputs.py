"""Raw inputs of the ingest commands and of VQ training, as random-access entries: an image folder (captions beside
the images), image-caption JSONL (image paths or base64 bytes), a TFDS dataset, or ArrayRecord files of encoded images.

`entry(i)` returns (where, kind, parts): `where` names the input in errors and logs, `kind` is a document kind,
`parts` are ("text", str) or ("image", encoded bytes | decoded array) in document order. Reading a bad input raises
ValueError or OSError naming it; whether that stops the run is the caller's `--on_bad_record`. Paths go through
etils.epath, so gs:// works wherever the filesystem does.
"""
import base64
import json

from etils import epath

from unimodal_jax import extras
from unimodal_jax.data import sources as data_sources

CAPTION_SUFFIX = ".txt"


class FolderSource:
  """Every regular, non-hidden file under `root` that is not a caption (recursive, sorted by relative path); the
  caption of `x.jpg` is `x.txt` beside it. With a caption an entry is an image_text_pair, without one an image alone.
  """

  def __init__(self, root: str):
    self.root = epath.Path(root)
    if not self.root.is_dir():
      raise FileNotFoundError(f"{root} is not a directory")
    files = [epath.Path(top) / name for top, _, names in self.root.walk() for name in names
             if not any(part.startswith(".") for part in (epath.Path(top) / name).relative_to(self.root).parts)]
    self.paths = sorted((p for p in files if p.suffix.lower() != CAPTION_SUFFIX), key=str)
    self._captions = {str(p) for p in files if p.suffix.lower() == CAPTION_SUFFIX}

  def __len__(self):
    return len(self.paths)

  def entry(self, i: int):
    path = self.paths[i]
    caption = path.with_suffix(CAPTION_SUFFIX)
    image = ("image", path.read_bytes())
    if str(caption) in self._captions:
      return str(path), "image_text_pair", [("text", caption.read_text().strip()), image]
    return str(path), "interleaved", [image]


class JsonlSource:
  """One document per non-empty line: {"text": str, "image": path} (an image_text_pair), {"segments": [{"text": str}
  | {"image": path}, ...]} (interleaved; text only: a text document), or either with {"image_bytes": base64} in
  place of an image path. Relative image paths are relative to the JSONL file."""

  def __init__(self, path: str):
    self.path = epath.Path(path)
    self.base = self.path.parent
    lines = self.path.read_text().splitlines()
    self.lines = [(n, line) for n, line in enumerate(lines, 1) if line.strip()]

  def __len__(self):
    return len(self.lines)

  def _image(self, segment: dict):
    if "image_bytes" in segment:
      return base64.b64decode(segment["image_bytes"], validate=True)
    path = epath.Path(segment["image"])
    return (path if path.is_absolute() or "://" in segment["image"] else self.base / path).read_bytes()

  def entry(self, i: int):
    number, line = self.lines[i]
    where = f"{self.path}:{number}"
    try:
      fields = json.loads(line)
      segments = fields["segments"] if "segments" in fields else [
          {"text": fields["text"]}, {k: fields[k] for k in ("image", "image_bytes") if k in fields}]
      names = [next(iter(s)) for s in segments]
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError, StopIteration) as e:
      raise ValueError(f"{where}: expected {{'text', 'image' | 'image_bytes'}} or {{'segments': [...]}}, got "
                       f"{line[:80]!r}") from e
    if any(len(s) != 1 or n not in ("text", "image", "image_bytes") for s, n in zip(segments, names)):
      raise ValueError(f"{where}: segments must be {{'text': str}}, {{'image': path}} or {{'image_bytes': base64}}")
    try:
      parts = [("text", s["text"]) if n == "text" else ("image", self._image(s)) for s, n in zip(segments, names)]
    except (OSError, ValueError) as e:
      raise type(e)(f"{where}: cannot read image: {e}") from e
    images = sum(n != "text" for n in names)
    kind = "interleaved" if "segments" in fields else "image_text_pair"
    return where, kind if images or kind != "interleaved" else "text", parts


class ArrayRecordSource:
  """Records that are encoded image files (PNG, JPEG, ...), over the files matching a glob, in sorted order; each
  becomes a document of one image."""

  def __init__(self, pattern: str):
    import grain
    self.paths = data_sources.glob_files(pattern)
    if not self.paths:
      raise FileNotFoundError(f"no files match {pattern}")
    self.source = grain.sources.ArrayRecordDataSource(self.paths)

  def __len__(self):
    return len(self.source)

  def entry(self, i: int):
    return f"{self.paths[0]} (of {len(self.paths)} files) record {i}", "interleaved", [("image", self.source[i])]


class TfdsSource:
  """`tfds.data_source(name, split)`, or a prepared dataset's directory (`builder_from_directory`); the
  `image_key` feature is encoded bytes or a uint8 array, the optional `caption_key` feature a str or bytes caption.
  No TensorFlow needed for array_record datasets."""

  def __init__(self, name: str, split: str, data_dir: str | None, image_key: str, caption_key: str | None = None):
    tfds = extras.require("tensorflow_datasets", "a TFDS image source")
    self.label = f"{name}:{split}"
    if epath.Path(name).is_dir():
      self.source = tfds.builder_from_directory(name).as_data_source(split=split)
    else:
      self.source = tfds.data_source(name, split=split, data_dir=data_dir or None)
    self.image_key, self.caption_key = image_key, caption_key

  def __len__(self):
    return len(self.source)

  def entry(self, i: int):
    where, example = f"{self.label}[{i}]", self.source[i]
    for key in (self.image_key, self.caption_key):
      if key and key not in example:
        raise KeyError(f"feature {key!r} is not in {self.label}: {sorted(example)}")
    image = ("image", example[self.image_key])
    if not self.caption_key:
      return where, "interleaved", [image]
    caption = example[self.caption_key]
    caption = caption.decode() if isinstance(caption, bytes) else str(caption)
    return where, "image_text_pair", [("text", caption), image]


def from_flags(*, images=None, jsonl=None, tfds=None, tfds_data_dir=None, image_key="image", caption_key=None,
               array_record=None):
  """The one source named by exactly one of images/jsonl/tfds/array_record (a command's flags); ValueError else."""
  given = {k: v for k, v in dict(images=images, jsonl=jsonl, tfds=tfds, array_record=array_record).items() if v}
  if len(given) != 1:
    raise ValueError(f"give exactly one of --images, --jsonl, --tfds, --array_record (got {sorted(given) or 'none'})")
  if images:
    return FolderSource(images)
  if jsonl:
    return JsonlSource(jsonl)
  if array_record:
    return ArrayRecordSource(array_record)
  name, _, split = tfds.rpartition(":")
  if not name or "/" in split:  # no split given ("gs://..." has a colon of its own)
    name, split = tfds, ""
  return TfdsSource(name, split or "train", tfds_data_dir, image_key, caption_key)
