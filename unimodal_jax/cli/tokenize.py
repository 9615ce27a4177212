"""`unimodal-tokenize`: images (with their captions) -> document record shards (version 2) that `data.source=shards`
trains on; every process of a multi-host run tokenizes its share of the shards on its own accelerators.

  unimodal-tokenize --images photos/ --text_tokenizer runs/text_tok --tokenizer runs/vq/tokenizer --out_dir shards/
  unimodal-tokenize --jsonl pairs.jsonl ... --distributed=auto        # every TPU VM worker runs the same command

Inputs: --images (x.jpg with caption x.txt beside it, or an image alone), --jsonl ({"text", "image" | "image_bytes"}
or {"segments": [...]}), --tfds (name:split, with --image_key and --caption_key) or --array_record (encoded images).
Shards are written atomically; a rerun after a kill resumes and writes the same bytes as an uninterrupted run.
"""
import json
import sys

import jax
from absl import app, flags
from jax.experimental import multihost_utils

from unimodal_jax import config as config_lib
from unimodal_jax.cli import common, ingest_flags
from unimodal_jax.cli.ingest_flags import JSONL, ON_BAD_RECORD, OUT_DIR, PREFIX, TEXT_TOKENIZER
from unimodal_jax.data import inputs
from unimodal_jax.ingest import build, encoders

_IMAGES = flags.DEFINE_string("images", None, "A folder of image files (recursive), each with an optional x.txt "
                              "caption.")
_TFDS = flags.DEFINE_string("tfds", None, "A TFDS dataset as name:split (tfds.data_source) or dataset_dir:split "
                            "(a prepared dataset's versioned directory).")
_TFDS_DIR = flags.DEFINE_string("tfds_data_dir", None, "TFDS data_dir.")
_IMAGE_KEY = flags.DEFINE_string("image_key", "image", "TFDS feature holding the image (bytes or uint8 array).")
_CAPTION_KEY = flags.DEFINE_string("caption_key", None, "TFDS feature holding the caption (none: images alone).")
_ARRAY_RECORD = flags.DEFINE_string("array_record", None, "Glob of ArrayRecord files whose records are image files.")
_TOKENIZER = flags.DEFINE_string("tokenizer", None, "A VQGAN tokenizer directory (unimodal-train-vq's "
                                 "<workdir>/tokenizer).")
_SHARD_SIZE = flags.DEFINE_integer("shard_size", 1024, "Inputs per shard.")
_BATCH = flags.DEFINE_integer("batch_size", 64, "Images per jitted encode (divisible by this process's devices).")
_MIN_SIZE = flags.DEFINE_integer("min_size", 16, "Skip images whose shorter side is below this.")
_MAX_PIXELS = flags.DEFINE_integer("max_pixels", 8192 * 8192, "Skip images with more pixels than this.")
_MAX_TOKENS = flags.DEFINE_integer("max_document_tokens", config_lib.default_config().data.max_document_tokens,
                                   "Longer documents are bad records (the run's data.max_document_tokens).")
_DISTRIBUTED = common.define_distributed_flags(__name__)
flags.adopt_module_key_flags(ingest_flags)


def main():
  if not (TEXT_TOKENIZER.value and _TOKENIZER.value and OUT_DIR.value):
    raise app.UsageError("--text_tokenizer, --tokenizer and --out_dir are required")
  _DISTRIBUTED.initialize()
  try:
    source = inputs.from_flags(images=_IMAGES.value, jsonl=JSONL.value, tfds=_TFDS.value,
                                tfds_data_dir=_TFDS_DIR.value, image_key=_IMAGE_KEY.value,
                                caption_key=_CAPTION_KEY.value, array_record=_ARRAY_RECORD.value)
  except ValueError as e:
    raise app.UsageError(str(e)) from e
  tok, plan = encoders.from_vqgan(TEXT_TOKENIZER.value, _TOKENIZER.value, batch_size=_BATCH.value,
                                  max_document_tokens=_MAX_TOKENS.value, devices=jax.local_devices(),
                                  min_size=_MIN_SIZE.value, max_pixels=_MAX_PIXELS.value)
  try:
    totals = build.write_documents(
        source, OUT_DIR.value, tok, plan={"source": type(source).__name__, **plan}, shard_size=_SHARD_SIZE.value,
        prefix=PREFIX.value, on_bad_record=ON_BAD_RECORD.value, process_index=jax.process_index(),
        process_count=jax.process_count(), barrier=_barrier)
  except ValueError as e:  # a bad input (--on_bad_record=raise) or an --out_dir of another run: one line, no trace
    sys.exit(f"unimodal-tokenize: {e}")
  if jax.process_index() == 0:
    print(json.dumps(totals), flush=True)


def _barrier():
  """Every process has finished its shards (so process 0 can sum all of them)."""
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices("unimodal-tokenize: shards written")


def run():
  common.run(sys.modules[__name__], main)


if __name__ == "__main__":
  run()
