"""The demo as a Mixture-of-Transformers: text and image experts, upcyclable from a demo checkpoint.

  unimodal-train --config configs/mot_demo.py --workdir runs/mot_demo
  unimodal-train --config configs/mot_demo.py --workdir runs/mot_up \\
      --config.train.upcycle_from=runs/demo/checkpoints/300 --config.data.dir=runs/demo/data
"""
import os

from unimodal_jax.config import load_config_file


def get_config():
  c = load_config_file(os.path.join(os.path.dirname(__file__), "demo.py"))
  c.model.num_experts = 2
  return c
