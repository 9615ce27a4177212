"""transformers' Chameleon token layout <-> our `Vocab`: one permutation of the embedding and output rows.

Owns the `vocabulary_map` conventions (IMGIMG... image tokens, <racm3:break>, <eoss>); knows nothing of weights.
"""
import dataclasses

import numpy as np

from unimodal_jax.data import vocab as vocab_lib

BOI_NAME = "<racm3:break>"  # what the Chameleon processor puts before an image's tokens
EOI_NAME = "<eoss>"  # ... and after them
IMAGE_PREFIX, IMAGE_SUFFIX = "IMGIMG", "Z"


def image_token_name(code: int) -> str:
  """The name of VQ code `code` in Chameleon's BPE: its decimal digits as letters (A=0 .. J=9), in IMGIMG...Z."""
  return IMAGE_PREFIX + "".join(chr(ord("A") + int(d)) for d in str(code)) + IMAGE_SUFFIX


def code_of_name(name: str) -> int:
  """The VQ code of an image token name (what transformers' ChameleonImageVocabularyMapping.bpe2img computes)."""
  letters = name[len(IMAGE_PREFIX):-len(IMAGE_SUFFIX)]
  if not (name.startswith(IMAGE_PREFIX) and name.endswith(IMAGE_SUFFIX) and letters
          and all("A" <= ch <= "J" for ch in letters)):
    raise ValueError(f"vocabulary_map: image token {name!r} is not {IMAGE_PREFIX} + letters A-J + {IMAGE_SUFFIX}")
  return int("".join(str(ord(ch) - ord("A")) for ch in letters))


@dataclasses.dataclass(frozen=True)
class Layout:
  """Where transformers' Chameleon keeps each token: its `vocabulary_map` (name -> id) and special ids.

  Ids in [0, vocab_size) that no name maps to are padding rows.
  """

  vocabulary_map: dict
  vocab_size: int
  pad_token_id: int
  bos_token_id: int
  eos_token_id: int


def layout_from_config(config: dict) -> Layout:
  """The layout of a Chameleon config.json. A list of eos ids uses its first; a null pad id falls back to the
  id of "<pad>"."""
  vmap = config.get("vocabulary_map")
  if not vmap:
    raise ValueError("config.json: vocabulary_map is missing; Chameleon needs it to find its image tokens")
  pad, eos = config.get("pad_token_id"), config.get("eos_token_id", 2)
  ids = {"pad_token_id": vmap.get("<pad>") if pad is None else pad, "bos_token_id": config.get("bos_token_id", 1),
         "eos_token_id": eos[0] if isinstance(eos, list) else eos}
  for key, value in ids.items():
    if not isinstance(value, int):
      raise ValueError(f"config.json: {key}={value!r}; our Vocab needs an id for <pad>, <bos> and <eos>")
  return Layout(vocabulary_map=dict(vmap), vocab_size=int(config.get("vocab_size", 65536)), **ids)


def synthetic_layout(vocab: vocab_lib.Vocab, vocab_size: int, text_token_names=None) -> Layout:
  """Our ids as transformers' ids (the identity permutation). Text ids are named by `text_token_names` (our BPE's
  tokens, id order) and, past its end, by unique placeholders; ids from vocab.size on are padding rows."""
  names = list(text_token_names or vocab_lib.TEXT_SPECIAL_TOKENS)
  if len(names) > vocab.text_size:
    raise ValueError(f"{len(names)} text token names for vocab.text_size={vocab.text_size}")
  names += [f"<text_{i}>" for i in range(len(names), vocab.text_size)]
  for i, name in enumerate(names):
    if name.startswith(IMAGE_PREFIX) or name in (BOI_NAME, EOI_NAME):
      raise ValueError(f"text token {i} is named {name!r}, which Chameleon reserves for images")
  vmap = {name: i for i, name in enumerate(names)}
  if len(vmap) != len(names):
    duplicate = next(n for i, n in enumerate(names) if vmap[n] != i)
    raise ValueError(f"text token name {duplicate!r} is used twice")
  vmap.update({BOI_NAME: vocab.boi_id, EOI_NAME: vocab.eoi_id})
  vmap.update({image_token_name(c): int(vocab.id_of(c)) for c in range(vocab.num_image_codes)})
  return Layout(vmap, vocab_size, vocab_lib.PAD_ID, vocab_lib.BOS_ID, vocab_lib.EOS_ID)


def _image_ids_by_code(vmap: dict) -> list[int]:
  by_code = {}
  for name, i in vmap.items():
    if name.startswith(IMAGE_PREFIX):
      code = code_of_name(name)
      if code in by_code:
        raise ValueError(f"vocabulary_map: image code {code} is named twice (ids {by_code[code]} and {i})")
      by_code[code] = i
  if not by_code or sorted(by_code) != list(range(len(by_code))):
    missing = sorted(set(range(max(by_code, default=0) + 1)) - set(by_code))
    raise ValueError(f"vocabulary_map: image codes must be 0..n-1 with n >= 1; missing codes {missing[:10]}")
  return [by_code[c] for c in range(len(by_code))]


def permutation(layout: Layout) -> tuple[np.ndarray, vocab_lib.Vocab]:
  """`hf_id_of[our_id]` for every row, and the Vocab it defines. Both directions of conversion use it.

  Our order: <pad>, <bos>, <eos>, the other named text ids in transformers' order, <boi>, <eoi>, image codes
  0..n-1, then the unnamed (padding) ids in transformers' order.
  """
  vmap, size = layout.vocabulary_map, layout.vocab_size
  name_of = {}
  for name, i in vmap.items():
    if not 0 <= i < size:
      raise ValueError(f"vocabulary_map[{name!r}]={i} lies outside [0, vocab_size={size})")
    if i in name_of:
      raise ValueError(f"vocabulary_map: {name_of[i]!r} and {name!r} share id {i}")
    name_of[i] = name
  for name in (BOI_NAME, EOI_NAME):
    if name not in vmap:
      raise ValueError(f"vocabulary_map has no {name!r}, which marks image boundaries")
  images = _image_ids_by_code(vmap)
  markers = [vmap[BOI_NAME], vmap[EOI_NAME]]
  specials = [layout.pad_token_id, layout.bos_token_id, layout.eos_token_id]
  if len(set(specials)) != 3 or set(specials) & set(images + markers):
    raise ValueError(f"pad/bos/eos ids {specials} must be distinct text ids (not image tokens or markers)")
  taken = set(specials + markers + images)
  text = specials + sorted(i for i in vmap.values() if i not in taken)
  padding = sorted(set(range(size)) - set(vmap.values()))
  hf_id_of = np.array(text + markers + images + padding, dtype=np.int64)
  return hf_id_of, vocab_lib.Vocab(text_size=len(text), num_image_codes=len(images))


def rows_to_hf(rows: np.ndarray, hf_id_of: np.ndarray) -> np.ndarray:
  """Our [vocab, ...] rows placed at transformers' ids."""
  out = np.empty_like(rows)
  out[hf_id_of] = rows
  return out


def rows_from_hf(rows: np.ndarray, hf_id_of: np.ndarray) -> np.ndarray:
  return rows[hf_id_of]
