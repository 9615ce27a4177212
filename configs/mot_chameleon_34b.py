"""Chameleon-34B shapes as a Mixture-of-Transformers: text and image experts for every non-embedding weight.

Target slice: v5p-512 (256 chips), 2,048 x 4,096 in one pass, like the dense config:
  unimodal-plan --config configs/mot_chameleon_34b.py --topology v5p-512
"""
import os

from unimodal_jax.config import load_config_file


def get_config():
  c = load_config_file(os.path.join(os.path.dirname(__file__), "chameleon_34b.py"))
  c.model.num_experts = 2
  return c
