"""`unimodal-tokenize` command line: flags -> `vq/tokenize.py`'s `tokenize` (flags live here so the library can be
imported beside other command-line modules)."""
import json
import sys

from absl import app, flags

from unimodal_jax.cli import common
from unimodal_jax.vq import images as images_lib
from unimodal_jax.vq.tokenize import tokenize

_IMAGES = flags.DEFINE_string("images", None, "A folder of image files (recursive).")
_TFDS = flags.DEFINE_string("tfds", None, "A TFDS dataset as name:split (tfds.data_source) or dataset_dir:split "
                            "(a prepared dataset's versioned directory).")
_TFDS_DIR = flags.DEFINE_string("tfds_data_dir", None, "TFDS data_dir.")
_IMAGE_KEY = flags.DEFINE_string("image_key", "image", "TFDS feature holding the image (bytes or uint8 array).")
_ARRAY_RECORD = flags.DEFINE_string("array_record", None, "Glob of ArrayRecord files whose records are image files.")
_TOKENIZER = flags.DEFINE_string("tokenizer", None, "A tokenizer directory (unimodal-train-vq's <workdir>/tokenizer).")
_OUT = flags.DEFINE_string("out_dir", None, "Where the code shards go.")
_SHARD_SIZE = flags.DEFINE_integer("shard_size", 1024, "Inputs per shard.")
_BATCH = flags.DEFINE_integer("batch_size", 64, "Images per jitted encode (divisible by the device count).")
_MIN_SIZE = flags.DEFINE_integer("min_size", 16, "Skip images whose shorter side is below this.")
_MAX_PIXELS = flags.DEFINE_integer("max_pixels", 8192 * 8192, "Skip images with more pixels than this.")


def _source():
  given = [f for f in (_IMAGES, _TFDS, _ARRAY_RECORD) if f.value]
  if len(given) != 1:
    raise app.UsageError("give exactly one of --images, --tfds, --array_record")
  if _IMAGES.value:
    return images_lib.FolderSource(_IMAGES.value)
  if _ARRAY_RECORD.value:
    return images_lib.ArrayRecordSource(_ARRAY_RECORD.value)
  name, _, split = _TFDS.value.rpartition(":") if ":" in _TFDS.value else (_TFDS.value, "", "")
  return images_lib.TfdsSource(name, split or "train", _TFDS_DIR.value, _IMAGE_KEY.value)


def main():
  if not (_TOKENIZER.value and _OUT.value):
    raise app.UsageError("--tokenizer and --out_dir are required")
  totals = tokenize(_source(), _TOKENIZER.value, _OUT.value, shard_size=_SHARD_SIZE.value, batch_size=_BATCH.value,
                    min_size=_MIN_SIZE.value, max_pixels=_MAX_PIXELS.value)
  print(json.dumps(totals), flush=True)


def run():
  common.run(sys.modules[__name__], main)


if __name__ == "__main__":
  run()
