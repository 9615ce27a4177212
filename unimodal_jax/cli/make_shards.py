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

from unimodal_jax.cli import common, ingest_flags
from unimodal_jax.cli.ingest_flags import JSONL, ON_BAD_RECORD, OUT_DIR, PREFIX, TEXT_TOKENIZER
from unimodal_jax.data import inputs
from unimodal_jax.ingest import build, encoders

_CONFIG = config_flags.DEFINE_config_file("config", None, "configs/*.py: vocab, vq and data settings of the run.")
_IMAGE_FOLDER = flags.DEFINE_string("image_folder", None, "Folder of images, each with a .txt caption beside it.")
_NUM_SHARDS = flags.DEFINE_integer("num_shards", 4, "Number of ArrayRecord files (at most: consecutive inputs, "
                                    "equally many per file).")
flags.adopt_module_key_flags(ingest_flags)


def main():
  if (JSONL.value is None) == (_IMAGE_FOLDER.value is None):
    raise app.UsageError("give exactly one of --jsonl and --image_folder")
  source = inputs.from_flags(images=_IMAGE_FOLDER.value, jsonl=JSONL.value)
  tok, plan = encoders.from_config(_CONFIG.value, TEXT_TOKENIZER.value, min_size=1)
  try:
    totals = build.write_documents(source, OUT_DIR.value, tok, plan={"source": type(source).__name__, **plan},
                                   shard_size=max(1, -(-len(source) // _NUM_SHARDS.value)), prefix=PREFIX.value,
                                   on_bad_record=ON_BAD_RECORD.value)
  except ValueError as e:  # a bad input (--on_bad_record=raise) or an --out_dir of another run: one line, no trace
    sys.exit(f"unimodal-make-shards: {e}")
  print(f"wrote {totals['shards']} shards to {OUT_DIR.value}: {totals['documents']} documents from "
        f"{totals['inputs']} inputs; skipped {totals['skipped'] or 'none'}")


def run():
  flags.mark_flags_as_required(["config", "text_tokenizer", "out_dir"])
  common.run(sys.modules[__name__], main)
