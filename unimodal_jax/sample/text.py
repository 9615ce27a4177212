"""Text in and out of sampling: prompt strings -> our ids, generated ids -> readable text with images marked.

A run's text tokenizer speaks our ids; a transformers Chameleon checkpoint's `tokenizer.json` speaks its own, which
`hf_id_of` (convert/vocab_map.py: our id -> its id) maps both ways.
"""
import numpy as np
import tokenizers
from etils import epath

from unimodal_jax.data import tokenizer as tokenizer_lib, vocab as vocab_lib


class TextCodec:
  """encode: str -> our text ids; decode: our text ids -> str."""

  def __init__(self, encode, decode, hf_id_of: np.ndarray | None = None, source: str = ""):
    self._encode, self._decode, self._hf_id_of, self.source = encode, decode, hf_id_of, source
    if hf_id_of is not None:
      self._ours_of = np.full(int(hf_id_of.max()) + 1, -1, np.int64)
      self._ours_of[hf_id_of] = np.arange(len(hf_id_of))

  @classmethod
  def for_run(cls, path: str, vocab: vocab_lib.Vocab) -> "TextCodec":
    """The run's BPE (data/tokenizer.py: its file or directory), checked to fit vocab.text_size."""
    tokenizer = tokenizer_lib.TextTokenizer.load(path, vocab)
    return cls(tokenizer.encode, tokenizer.decode, source=path)

  @classmethod
  def for_checkpoint(cls, path: str, hf_id_of: np.ndarray) -> "TextCodec":
    """A transformers checkpoint's tokenizer.json, whose ids `hf_id_of` maps to ours."""
    tokenizer = tokenizers.Tokenizer.from_str(epath.Path(path).read_text())
    tokenizer.encode_special_tokens = True  # a prompt that spells "<s>" is text, not the special id
    return cls(lambda text: tokenizer.encode(text, add_special_tokens=False).ids,
               lambda ids: tokenizer.decode(list(ids), skip_special_tokens=False), hf_id_of, source=path)

  def encode(self, text: str) -> np.ndarray:
    ids = np.asarray(self._encode(text), np.int64).reshape(-1)
    if self._hf_id_of is None:
      return ids.astype(np.int32)
    ours = self._ours_of[np.clip(ids, 0, len(self._ours_of) - 1)]
    if ((ids >= len(self._ours_of)) | (ours < 0)).any():
      raise ValueError(f"{self.source}: the text {text!r} encodes to ids the checkpoint's vocabulary map lacks")
    return ours.astype(np.int32)

  def decode(self, ids) -> str:
    ids = np.asarray(ids, np.int64).reshape(-1)
    if self._hf_id_of is not None:
      ids = self._hf_id_of[ids]
    return self._decode([int(i) for i in ids])


def prompt(text: str, codec: TextCodec, image_tokens=None) -> np.ndarray:
  """<bos>, then an image's stream tokens (<boi> codes <eoi>) if given, then the text."""
  parts = [np.array([vocab_lib.BOS_ID], np.int32)]
  if image_tokens is not None:
    parts.append(np.asarray(image_tokens, np.int32))
  return np.concatenate(parts + [codec.encode(text)]).astype(np.int32)


def render(tokens, vocab: vocab_lib.Vocab, codec: TextCodec) -> str:
  """Generated ids as text: each image as `<image>`, an unfinished one as `<image ...>`; stops at <eos>."""
  out, text = [], []
  tokens = np.asarray(tokens).reshape(-1)
  i = 0
  while i < len(tokens) and tokens[i] not in (vocab_lib.EOS_ID, vocab_lib.PAD_ID):
    if tokens[i] == vocab.boi_id:
      out.append(codec.decode(text) if text else "")
      text, close = [], np.flatnonzero(tokens[i:] == vocab.eoi_id)
      out.append("<image>" if close.size else "<image ...>")
      i += int(close[0]) + 1 if close.size else len(tokens)
      continue
    if tokens[i] < vocab.text_size:
      text.append(int(tokens[i]))
    i += 1
  out.append(codec.decode(text) if text else "")
  return "".join(out)
