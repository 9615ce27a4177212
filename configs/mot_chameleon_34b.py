"""Chameleon-34B shapes as a Mixture-of-Transformers: text and image experts for every non-embedding weight."""
import os

from unimodal_jax.config import load_config_file


def get_config():
  c = load_config_file(os.path.join(os.path.dirname(__file__), "chameleon_34b.py"))
  c.model.num_experts = 2
  return c
