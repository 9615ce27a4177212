"""tools/: show_batch decodes packed rows back to the embedded dataset's captions and images."""
import importlib.util
import os

import numpy as np

from test_model import load_config
from unimodal_jax.data import embedded, pipeline
from unimodal_jax.data.vocab import from_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_tool(name):
  spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, "tools", f"{name}.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_show_batch_recovers_captions_and_images(tmp_path):
  c = load_config("tiny")
  c.data.seq_len, c.train.batch_size = 256, 4
  vocab = from_config(c)
  paths = embedded.prepare(c, str(tmp_path))
  text_tok, image_tok = embedded.load_tokenizers(str(tmp_path), vocab)
  batch = next(b for b in iter(pipeline.make_dataset(c, paths)) if np.any(b.tokens == vocab.boi_id))
  show_batch = load_tool("show_batch")
  captions = {caption for _, _, caption in embedded.IMAGES}
  num_images, num_captions = 0, 0
  for row in range(batch.shape[0]):
    lines, images = show_batch.describe_row(batch.tokens[row], batch.segment_ids[row], vocab, text_tok, image_tok)
    assert len(lines) == batch.segment_ids[row].max()
    assert all(im.shape == (c.vq.image_size, c.vq.image_size, 3) and im.dtype == np.uint8 for im in images)
    num_images += len(images)
    num_captions += sum(caption in line for line in lines for caption in captions)
  assert num_images == int(np.sum(batch.tokens == vocab.boi_id)) > 0
  assert num_captions > 0
