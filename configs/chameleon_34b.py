"""Chameleon-34B shapes (Team Chameleon 2024): swin norm order, GQA (64 heads, 8 kv), QK-norm, z-loss.

Same vocabulary, image tokenization, data and optimizer as configs/chameleon_7b.py (splash attention on TPU, full
remat, chunked loss). Target slice: v5p-512 (256 chips, FSDP over all), 2,048 x 4,096 in one pass:
  unimodal-plan --config configs/chameleon_34b.py --topology v5p-512
On v5p-256 the batch fits as 2 microbatches of 1,024 rows: 62.4 GiB of 95.74 per chip (docs/pod_plans.md):
  unimodal-plan --config configs/chameleon_34b.py --topology v5p-256 --config.train.grad_accum_steps=2
"""
import os

from unimodal_jax.config import load_config_file


def get_config():
  c = load_config_file(os.path.join(os.path.dirname(__file__), "chameleon_7b.py"))
  c.model.num_layers = 48
  c.model.embed_dim = 8192
  c.model.num_heads = 64
  c.model.num_kv_heads = 8
  c.model.head_dim = 128
  c.model.mlp_dim = 22016
  c.model.norm_order = "swin"
  c.model.dropout_rate = 0.0  # the paper uses dropout only for the pre-norm 7B
  return c
