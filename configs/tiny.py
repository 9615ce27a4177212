"""Tiny: the test model (GQA, QK-norm) on a small embedded dataset; seconds per run on CPU.

  unimodal-train --config configs/tiny.py --workdir /tmp/tiny
"""
from unimodal_jax.config import default_config


def get_config():
  c = default_config()
  c.vocab.text_size = 512
  c.vq.image_size = 32
  c.vq.patch_size = 8  # 4x4 = 16 codes per image
  c.vq.num_codes = 64
  c.data.seq_len = 64
  c.model.vocab_size = 640
  c.model.num_layers = 2
  c.model.embed_dim = 64
  c.model.num_heads = 4
  c.model.num_kv_heads = 2
  c.model.head_dim = 16
  c.model.mlp_dim = 128
  c.train.batch_size = 8
  c.train.num_steps = 20
  c.train.log_every = 5
  c.train.checkpoint_every = 10
  c.optim.warmup_steps = 5
  return c
