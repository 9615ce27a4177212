"""Text tokenizer: a byte-level BPE (HF `tokenizers`) whose ids are the text ids of the unified `Vocab`.

Ids 0, 1, 2 are <pad>, <bos>, <eos> (vocab.TEXT_SPECIAL_TOKENS); `encode` never adds them, and text that
spells one of them (e.g. the string "<bos>") is encoded as plain bytes, never as the special id.
"""
import hashlib

import numpy as np
import tokenizers
from etils import epath
from tokenizers import decoders, models, pre_tokenizers, trainers

from unimodal_jax.data import vocab as vocab_lib

TOKENIZER_FILE = "tokenizer.json"  # the file inside a tokenizer directory (unimodal-train-text-tokenizer's --out)
_MIN_SIZE = len(vocab_lib.TEXT_SPECIAL_TOKENS) + 256  # specials + the byte alphabet


class TextTokenizer:
  """Wraps a `tokenizers.Tokenizer`; ids lie in [0, size)."""

  def __init__(self, tokenizer: tokenizers.Tokenizer, source: str = "<memory>"):
    specials = [tokenizer.token_to_id(t) for t in vocab_lib.TEXT_SPECIAL_TOKENS]
    expected = [vocab_lib.PAD_ID, vocab_lib.BOS_ID, vocab_lib.EOS_ID]
    if specials != expected:
      raise ValueError(f"text tokenizer {source}: {vocab_lib.TEXT_SPECIAL_TOKENS} have ids {specials}, "
                       f"expected {expected}")
    tokenizer.encode_special_tokens = True  # not saved in the json, so set on every load
    self._tokenizer = tokenizer
    self.source = source

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
    epath.Path(path).write_text(self._tokenizer.to_str())

  @classmethod
  def load(cls, path: str, vocab: vocab_lib.Vocab | None = None) -> "TextTokenizer":
    """Loads a saved tokenizer (its JSON file, or a directory holding TOKENIZER_FILE; local or gs://...); with
    `vocab`, also checks that its ids fit in vocab.text_size."""
    file = epath.Path(path)
    if file.is_dir():
      file = file / TOKENIZER_FILE
    tokenizer = cls(tokenizers.Tokenizer.from_str(file.read_text()), source=str(file))
    if vocab is not None:
      tokenizer.check_fits(vocab)
    return tokenizer
