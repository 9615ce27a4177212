"""Tiny Mixture-of-Transformers (text and image experts, every group untied): the MoT test model.

  unimodal-train --config configs/mot_tiny.py --workdir /tmp/mot_tiny
"""
import os

from unimodal_jax.config import load_config_file


def get_config():
  c = load_config_file(os.path.join(os.path.dirname(__file__), "tiny.py"))
  c.model.num_experts = 2
  return c
