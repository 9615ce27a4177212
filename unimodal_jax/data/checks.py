"""Validation of the `config.data` and `config.vocab` keys: sources, formatting, the vocabulary and sequence length."""
from unimodal_jax.config import ConfigError, check as _check
from unimodal_jax.data.documents import KINDS
from unimodal_jax.data.vocab import from_config, image_tokens_per_image

DATA_SOURCES = (
    "embedded",  # the bundled dataset, built on first use (unimodal_jax/data/embedded.py)
    "shards",  # tokenized-document ArrayRecord shards (unimodal_jax/data/documents.py) in data.dir
    "mixture",  # the weighted sources of data.sources (unimodal_jax/data/sources.py)
)
BAD_RECORD_MODES = ("raise", "skip")


def check(config) -> None:
  d = config.data
  _check(config.vocab.text_size > 3, "vocab.text_size", f"must be > 3 (<pad>, <bos>, <eos> and text), got "
         f"{config.vocab.text_size}")
  _check(d.seq_len >= 2, "data.seq_len", f"must be >= 2, got {d.seq_len}")
  for key in ("loss_weight_text", "loss_weight_image"):
    _check(d[key] >= 0, f"data.{key}", f"must be >= 0, got {d[key]}")
  _check(d.loss_weight_text + d.loss_weight_image > 0, "data.loss_weight_text",
         "data.loss_weight_text and data.loss_weight_image are both 0: nothing would be learned")
  for key in ("worker_count", "read_threads", "num_shards"):
    _check(d[key] >= 0, f"data.{key}", f"must be >= 0, got {d[key]}")
  _check(d.source in DATA_SOURCES, "data.source", f"{d.source!r} is not one of {DATA_SOURCES}")
  _check(d.source != "shards" or d.dir, "data.dir", "data.source='shards' needs the directory of its shards")
  _check(d.source != "mixture" or len(d.sources) > 0, "data.sources", "data.source='mixture' needs named sources")
  for name in d.sources:
    entry, key = d.sources[name], f"data.sources.{name}"
    _check(entry.get("kind") in ("shards", "tfds"), f"{key}.kind", f"{entry.get('kind')!r} is not 'shards' or 'tfds'")
    _check(entry.get("weight", 0) > 0, f"{key}.weight", f"must be > 0, got {entry.get('weight')}")
    _check(bool(entry.get("path") or entry.get("tfds_name")), f"{key}.path",
           "needs a glob or directory of shards (kind='shards') or a TFDS builder directory / tfds_name")
    _check(entry.get("kind") != "tfds" or bool(entry.get("split")), f"{key}.split", "a tfds source needs a split")
  _check(d.on_bad_record in BAD_RECORD_MODES, "data.on_bad_record",
         f"{d.on_bad_record!r} is not one of {BAD_RECORD_MODES}")
  for key in ("caption_first_ratio", "cfg_dropout"):
    _check(0.0 <= d[key] <= 1.0, f"data.{key}", f"must be in [0, 1], got {d[key]}")
  kinds = [k.strip() for k in d.document_kinds.split(",")] if d.document_kinds.strip() else []
  unknown = [k for k in kinds if k not in KINDS]
  _check(not unknown, "data.document_kinds", f"{unknown} not in {KINDS} (comma-separated; '' keeps every kind)")
  _check(len(set(kinds)) == len(kinds), "data.document_kinds", f"names a kind twice: {d.document_kinds!r}")
  _check(d.max_document_tokens >= 3, "data.max_document_tokens", f"must be >= 3, got {d.max_document_tokens}")
  try:
    vocab = from_config(config)
  except ValueError as e:
    raise ConfigError(f"config.vocab / config.vq: {e}") from e
  _check(config.model.vocab_size >= vocab.size, "model.vocab_size",
         f"{config.model.vocab_size} is smaller than the unified vocabulary ({vocab.text_size} text ids + <boi>, "
         f"<eoi> + {vocab.num_image_codes} image codes = {vocab.size})")
  per_image = image_tokens_per_image(config)
  _check(d.seq_len >= per_image, "data.seq_len",
         f"{d.seq_len} cannot hold one image of {per_image} tokens (<boi> + codes + <eoi>); images are never split")
