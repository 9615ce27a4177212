"""Chameleon-7B shapes as a Mixture-of-Transformers: text and image experts for every non-embedding weight.

Twice the non-embedding parameters of configs/chameleon_7b.py at the same FLOPs per token. Target slice: v5p-256
(128 chips), 2,048 x 4,096 in one pass, like the dense config:
  unimodal-plan --config configs/mot_chameleon_7b.py --topology v5p-256
"""
import os

from unimodal_jax.config import load_config_file


def get_config():
  c = load_config_file(os.path.join(os.path.dirname(__file__), "chameleon_7b.py"))
  c.model.num_experts = 2
  return c
