"""`unimodal-make-shards` command line: flags -> `data/make_shards.py` (flags live here so the library can be
imported beside other command-line modules)."""
import sys

from absl import app, flags
from ml_collections import config_flags

from unimodal_jax.cli import common
from unimodal_jax.data.make_shards import folder_entries, folder_images, jsonl_entries, make_shards

_CONFIG = config_flags.DEFINE_config_file("config", None, "configs/*.py: vocab and vq settings of the run.")
_TEXT_TOKENIZER = flags.DEFINE_string("text_tokenizer", None, "Saved text tokenizer (tokenizer.json).")
_JSONL = flags.DEFINE_string("jsonl", None, "JSONL file of documents.")
_IMAGE_FOLDER = flags.DEFINE_string("image_folder", None, "Folder of images, each with a .txt caption beside it.")
_OUT_DIR = flags.DEFINE_string("out_dir", None, "Where to write the shards.")
_NUM_SHARDS = flags.DEFINE_integer("num_shards", 4, "Number of ArrayRecord files.")
_PREFIX = flags.DEFINE_string("prefix", "train", "Shard file name prefix.")
_BATCH = flags.DEFINE_integer("images_per_batch", 64, "Images tokenized per call of the image tokenizer.")


def main():
  if (_JSONL.value is None) == (_IMAGE_FOLDER.value is None):
    raise app.UsageError("give exactly one of --jsonl and --image_folder")
  if _JSONL.value:
    with open(_JSONL.value) as f:
      total = sum(1 for line in f if line.strip())
    entries = jsonl_entries(_JSONL.value)
  else:
    total = len(folder_images(_IMAGE_FOLDER.value))
    entries = folder_entries(_IMAGE_FOLDER.value)
  paths = make_shards(_CONFIG.value, _TEXT_TOKENIZER.value, entries, _OUT_DIR.value, _NUM_SHARDS.value,
                      _PREFIX.value, _BATCH.value, total)
  print(f"wrote {len(paths)} shards to {_OUT_DIR.value}")


def run():
  flags.mark_flags_as_required(["config", "text_tokenizer", "out_dir"])
  common.run(sys.modules[__name__], main)
