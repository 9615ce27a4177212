"""Plan a TPU run ahead of time from a checkout: the `unimodal-plan` command (unimodal_jax/parallel/plan_main.py).

  python tools/plan.py --config configs/chameleon_7b.py --topology v5p-256 --config.model.attention=splash
"""
from unimodal_jax.parallel import plan_main

if __name__ == "__main__":
  plan_main.run()
