"""Text tokenizer: a byte-level BPE (HF `tokenizers`) whose ids are the text ids of the unified `Vocab`; trained
here (from texts, or streamed from JSONL/text files) or imported from a transformers tokenizer directory.

Ids 0, 1, 2 are <pad>, <bos>, <eos> (vocab.TEXT_SPECIAL_TOKENS; an imported tokenizer may spell them otherwise,
named in its directory's SPECIALS_FILE); `encode` never adds them, and text that spells one of them (e.g. the string
"<bos>") is encoded as plain bytes, never as the special id.
"""
import hashlib
import json
from collections.abc import Iterator

import numpy as np
import tokenizers
from etils import epath
from tokenizers import decoders, models, pre_tokenizers, trainers

from unimodal_jax.data import sources
from unimodal_jax.data import vocab as vocab_lib

TOKENIZER_FILE = "tokenizer.json"  # the file inside a tokenizer directory (unimodal-train-text-tokenizer's --out)
SPECIALS_FILE = "special_tokens.json"  # beside it when <pad>, <bos>, <eos> have other names (an import)
_MIN_SIZE = len(vocab_lib.TEXT_SPECIAL_TOKENS) + 256  # specials + the byte alphabet


class TextTokenizer:
  """Wraps a `tokenizers.Tokenizer`; ids lie in [0, size)."""

  def __init__(self, tokenizer: tokenizers.Tokenizer, source: str = "<memory>",
               specials: tuple[str, str, str] = vocab_lib.TEXT_SPECIAL_TOKENS):
    ids = [tokenizer.token_to_id(t) for t in specials]
    expected = [vocab_lib.PAD_ID, vocab_lib.BOS_ID, vocab_lib.EOS_ID]
    if ids != expected:
      raise ValueError(f"text tokenizer {source}: the vocabulary contract needs <pad>, <bos>, <eos> at ids {expected}, "
                       f"but its {tuple(specials)} have ids {ids}")
    tokenizer.encode_special_tokens = True  # not saved in the json, so set on every load
    self._tokenizer = tokenizer
    self.source = source
    self.specials = tuple(specials)

  @classmethod
  def train(cls, texts, vocab_size: int) -> "TextTokenizer":
    """Deterministic for the same texts; the result may have fewer than `vocab_size` ids on a small corpus."""
    if vocab_size < _MIN_SIZE:
      raise ValueError(f"vocab.text_size={vocab_size} must be >= {_MIN_SIZE} (3 special ids + 256 bytes)")
    tokenizer = tokenizers.Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=list(vocab_lib.TEXT_SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator(texts, trainer)
    return cls(tokenizer)

  @classmethod
  def train_files(cls, pattern: str, vocab_size: int) -> "TextTokenizer":
    """Trains on the files matching `pattern` (local or gs://), streamed: a `.jsonl` line gives its "text" (or the
    texts of its "segments"), any other file one text per line. HF tokenizers counts pairs on all cores."""
    paths = sources.glob_files(pattern)
    if not paths:
      raise FileNotFoundError(f"--input={pattern!r} matches no files")
    return cls.train(corpus_texts(paths), vocab_size)

  @classmethod
  def from_transformers(cls, path: str) -> "TextTokenizer":
    """The fast tokenizer of a transformers directory (e.g. an exported Chameleon), with its pad/bos/eos tokens as
    <pad>, <bos>, <eos>; they must already have ids 0, 1, 2 (ids are never remapped: they are the model's)."""
    import transformers
    hf = transformers.AutoTokenizer.from_pretrained(path)
    if not hf.is_fast:
      raise ValueError(f"{path}: {type(hf).__name__} is not a fast (HF tokenizers) tokenizer")
    missing = [n for n in ("pad_token", "bos_token", "eos_token") if getattr(hf, n) is None]
    if missing:
      raise ValueError(f"{path}: the tokenizer defines no {', '.join(missing)}; the vocabulary contract needs "
                       f"<pad>, <bos>, <eos> at ids 0, 1, 2")
    backend = tokenizers.Tokenizer.from_str(hf.backend_tokenizer.to_str())
    return cls(backend, source=path, specials=(hf.pad_token, hf.bos_token, hf.eos_token))

  @property
  def size(self) -> int:
    return self._tokenizer.get_vocab_size()

  def check_fits(self, vocab: vocab_lib.Vocab) -> None:
    """Raises if this tokenizer's ids do not all lie below vocab.text_size."""
    if self.size > vocab.text_size:
      raise ValueError(f"text tokenizer {self.source} has {self.size} ids but vocab.text_size={vocab.text_size}; "
                       f"set vocab.text_size >= {self.size} or retrain the tokenizer")

  def encode(self, text: str) -> np.ndarray:
    return np.asarray(self._tokenizer.encode(text, add_special_tokens=False).ids, dtype=np.int32)

  def decode(self, ids) -> str:
    ids = np.asarray(ids).reshape(-1)
    if ids.size and (ids.min() < 0 or ids.max() >= self.size):
      raise ValueError(f"text ids must lie in [0, {self.size}), got [{ids.min()}, {ids.max()}]")
    return self._tokenizer.decode(ids.tolist(), skip_special_tokens=False)

  def fingerprint(self) -> str:
    """sha256 of the tokenizer's JSON: which tokenizer made a set of ids, wherever it is stored."""
    return hashlib.sha256(self._tokenizer.to_str().encode()).hexdigest()

  def save(self, path: str) -> None:
    """Writes the tokenizer's JSON to `path` (a file; local or gs://...)."""
    if self.specials != vocab_lib.TEXT_SPECIAL_TOKENS:
      raise ValueError(f"{self.source}: its special tokens are named {self.specials}: save it as a directory "
                       f"(save_dir), which records them")
    epath.Path(path).write_text(self._tokenizer.to_str())

  def save_dir(self, directory: str) -> None:
    """Writes DIR/tokenizer.json (and DIR/special_tokens.json for other special names): what a config points at."""
    out = epath.Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    (out / TOKENIZER_FILE).write_text(self._tokenizer.to_str())
    if self.specials != vocab_lib.TEXT_SPECIAL_TOKENS:
      (out / SPECIALS_FILE).write_text(json.dumps(list(self.specials)))

  @classmethod
  def load(cls, path: str, vocab: vocab_lib.Vocab | None = None) -> "TextTokenizer":
    """Loads a saved tokenizer (its JSON file, or a directory holding TOKENIZER_FILE; local or gs://...); with
    `vocab`, also checks that its ids fit in vocab.text_size."""
    file, specials = epath.Path(path), vocab_lib.TEXT_SPECIAL_TOKENS
    try:
      if file.is_dir():
        if (file / SPECIALS_FILE).exists():
          specials = tuple(json.loads((file / SPECIALS_FILE).read_text()))
        file = file / TOKENIZER_FILE
      tokenizer = cls(tokenizers.Tokenizer.from_str(file.read_text()), source=str(file), specials=specials)
    except Exception as e:  # tokenizers raises its own Exception type for missing or malformed files
      raise ValueError(f"{file}: not a readable text tokenizer file ({type(e).__name__}: {e})") from e
    if vocab is not None:
      tokenizer.check_fits(vocab)
    return tokenizer


def corpus_texts(paths) -> Iterator[str]:
  """The texts of JSONL files (each line's "text", or its segments' texts) and plain files (each non-empty line)."""
  for path in paths:
    with epath.Path(path).open() as f:
      for number, line in enumerate(f, 1):
        if not line.strip():
          continue
        if not str(path).endswith(".jsonl"):
          yield line
          continue
        try:
          entry = json.loads(line)
          texts = [s["text"] for s in entry["segments"] if "text" in s] if "segments" in entry else [entry["text"]]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
          raise ValueError(f"{path}:{number}: expected {{'text': str}} or {{'segments': [...]}}") from e
        yield from texts
