"""Look at the data the model sees: decode packed rows of a config's pipeline back to text and images.

  python tools/show_batch.py --config configs/demo.py --workdir runs/demo --rows 2 --out /tmp/batch
  python tools/show_batch.py --config my_run.py --text_tokenizer runs/text_tok --out /tmp/batch  # your own shards

Prints each packed document (segment) of the first rows as text with `[image k]` markers and writes
the images of those rows as PNGs into --out. Works for the embedded dataset (k-means codebook or VQGAN) and for
data.source='shards' or 'mixture' (with --text_tokenizer; images decoded by the VQGAN at config.vq.tokenizer_path).
"""
import os

import numpy as np
import skimage.io
from absl import app, flags
from ml_collections import config_flags

from unimodal_jax.data import embedded, pipeline, sources
from unimodal_jax.data.tokenizer import TextTokenizer
from unimodal_jax.data.vocab import from_config
from unimodal_jax.vq import codes

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to a configs/*.py file.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory whose data/ holds the embedded dataset.")
_TEXT_TOKENIZER = flags.DEFINE_string("text_tokenizer", None, "The text tokenizer of shards you made (not embedded).")
_ROWS = flags.DEFINE_integer("rows", 2, "How many packed rows of the first batch to show.")
_OUT = flags.DEFINE_string("out", None, "Folder for the images' PNGs.")
flags.mark_flags_as_required(["config", "out"])


def describe_row(tokens, segment_ids, vocab, text_tok, image_tok):
  """(lines of text, images) for one packed row; each segment is one line, images become [image k]."""
  lines, images = [], []
  for seg in range(1, segment_ids.max() + 1):
    ids, parts, i = tokens[segment_ids == seg], [], 0
    while i < len(ids):
      if ids[i] == vocab.boi_id:
        end = i + 1 + image_tok.grid_size ** 2
        codes = vocab.code_of(ids[i + 1:end]).reshape(1, image_tok.grid_size, image_tok.grid_size)
        images.append(image_tok.decode(codes)[0])
        parts.append(f"[image {len(images) - 1}]")
        i = end + 1  # past <eoi>
      else:
        j = i
        while j < len(ids) and ids[j] != vocab.boi_id:
          j += 1
        parts.append(text_tok.decode(ids[i:j]))
        i = j
    lines.append(f"segment {seg} ({len(ids)} tokens): " + "".join(parts))
  return lines, images


def main(argv):
  del argv
  config = _CONFIG.value
  vocab = from_config(config)
  if config.data.source == "embedded":
    data_dir = config.data.dir or os.path.join(_WORKDIR.value, "data")
    paths = embedded.prepare(config, data_dir)
    text_tok, image_tok = embedded.load_tokenizers(data_dir, vocab)
  else:
    if not _TEXT_TOKENIZER.value:
      raise app.UsageError(f"data.source={config.data.source!r} needs --text_tokenizer")
    paths = sources.shard_paths(config.data.dir, "data.dir") if config.data.source == "shards" else None
    text_tok = TextTokenizer.load(_TEXT_TOKENIZER.value, vocab)
    image_tok = codes.VQGANTokenizer(config.vq.tokenizer_path)
  batch = next(iter(pipeline.make_dataset(config, paths)))
  os.makedirs(_OUT.value, exist_ok=True)
  for row in range(min(_ROWS.value, batch.shape[0])):
    lines, images = describe_row(batch.tokens[row], batch.segment_ids[row], vocab, text_tok, image_tok)
    print(f"--- row {row}: {int((batch.segment_ids[row] > 0).sum())} of {batch.shape[1]} tokens used")
    print("\n".join(lines))
    for k, image in enumerate(images):
      skimage.io.imsave(os.path.join(_OUT.value, f"row{row}_image{k}.png"), image, check_contrast=False)


if __name__ == "__main__":
  app.run(main)
