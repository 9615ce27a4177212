"""`unimodal-make-shards`: JSONL documents or an image-caption folder -> document record shards (version 2), with the
run config's text and image tokenizers, in one process (`unimodal-tokenize` is the multi-host VQGAN route).

  unimodal-make-shards --config configs/demo.py --text_tokenizer runs/demo/data/tokenizer.json \
      --jsonl docs.jsonl --out_dir shards/ [--num_shards 8] [--on_bad_record=skip]
  unimodal-make-shards ... --image_folder photos/   # every photos/x.jpg with its caption photos/x.txt

A JSONL line is {"text": str, "image": path | "image_bytes": base64} (an image_text_pair) or {"segments":
[{"text": str} | {"image": path}, ...]} (interleaved; text only: a text document); image paths are relative to the
JSONL file. Shards are written atomically; a rerun resumes a half-written --out_dir or refuses one of another run.
"""
import sys

from absl import app, flags
from ml_collections import config_flags

from unimodal_jax.cli import common
from unimodal_jax.ingest import build, encoders, sources

_CONFIG = config_flags.DEFINE_config_file("config", None, "configs/*.py: vocab, vq and data settings of the run.")
_TEXT_TOKENIZER = flags.DEFINE_string("text_tokenizer", None, "Saved text tokenizer (tokenizer.json or its folder).")
_JSONL = flags.DEFINE_string("jsonl", None, "JSONL file of documents.")
_IMAGE_FOLDER = flags.DEFINE_string("image_folder", None, "Folder of images, each with a .txt caption beside it.")
_OUT_DIR = flags.DEFINE_string("out_dir", None, "Where to write the shards (local or gs://).")
_NUM_SHARDS = flags.DEFINE_integer("num_shards", 4, "Number of ArrayRecord files (at most: consecutive inputs, "
                                    "equally many per file).")
_PREFIX = flags.DEFINE_string("prefix", "train", "Shard file name prefix.")
_ON_BAD = flags.DEFINE_enum("on_bad_record", "raise", ["raise", "skip"], "raise: stop naming the input; skip: log "
                            "it, count it in the summary and go on.")


def main():
  if (_JSONL.value is None) == (_IMAGE_FOLDER.value is None):
    raise app.UsageError("give exactly one of --jsonl and --image_folder")
  source = sources.from_flags(images=_IMAGE_FOLDER.value, jsonl=_JSONL.value)
  tok, plan = encoders.from_config(_CONFIG.value, _TEXT_TOKENIZER.value, min_size=1)
  try:
    totals = build.write_documents(source, _OUT_DIR.value, tok, plan={"source": type(source).__name__, **plan},
                                   shard_size=max(1, -(-len(source) // _NUM_SHARDS.value)), prefix=_PREFIX.value,
                                   on_bad_record=_ON_BAD.value)
  except ValueError as e:  # a bad input (--on_bad_record=raise) or an --out_dir of another run: one line, no trace
    sys.exit(f"unimodal-make-shards: {e}")
  print(f"wrote {totals['shards']} shards to {_OUT_DIR.value}: {totals['documents']} documents from "
        f"{totals['inputs']} inputs; skipped {totals['skipped'] or 'none'}")


def run():
  flags.mark_flags_as_required(["config", "text_tokenizer", "out_dir"])
  common.run(sys.modules[__name__], main)
