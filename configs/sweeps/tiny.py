"""Tiny sweep: the test model (configs/tiny.py) at 2 sizes x 3 token budgets with WSD branches; ~1 minute on a CPU.

  unimodal-sweep plan   --spec configs/sweeps/tiny.py
  unimodal-sweep launch --spec configs/sweeps/tiny.py --sweep_dir runs/sweep_tiny

Each size trains one run to 0.5 tokens per parameter; the 0.25 and 0.375 points are 1-sqrt cooldowns branched off
its stable phase. It checks the machinery, not a law: the models see a fraction of a token per parameter.
"""
import ml_collections


def get_config():
  s = ml_collections.ConfigDict()
  s.name = "tiny"
  s.base_config = "../tiny.py"  # relative to this file
  s.family = ml_collections.ConfigDict(dict(
      head_dim=16, aspect_ratio=32, base_depth=1, depth_step=1, mlp_ratio=2.0, kv_group=1,
      base_lr=3e-3, base_width=64, lr_width_exponent=0.5))
  s.sizes = (0, 1)
  s.budget_kind = "tokens_per_param"  # of s.param_count
  s.budgets = (0.25, 0.375, 0.5)
  s.param_count = "non_embedding"
  s.wsd = True
  s.cooldown_fraction = 0.2  # Hägele et al. 2024: 1-sqrt cooldown over 10-20% of the run
  s.steps_multiple = 2
  s.overrides = ("optim.warmup_steps=2", "optim.wsd_decay=sqrt", "train.log_every=2", "eval.num_batches=1",
                 "train.prefetch_batches=0")
  s.variants = ml_collections.ConfigDict({"dense": ()})
  return s
