"""Chameleon-7B shapes as a Mixture-of-Transformers: text and image experts for every non-embedding weight.

Twice the non-embedding parameters of configs/chameleon_7b.py at the same FLOPs per token.
"""
import os

from unimodal_jax.config import load_config_file


def get_config():
  c = load_config_file(os.path.join(os.path.dirname(__file__), "chameleon_7b.py"))
  c.model.num_experts = 2
  return c
