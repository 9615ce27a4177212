"""The CPU sweep of docs/scaling.md: 3 sizes x 3 token budgets on the embedded data, mixed (every document kind),
text-only and image-only, the unimodal variants at the smallest and largest size; ~40 minutes on 2 cores
(docs/scaling.md: its table, fits and plots).

  unimodal-sweep plan   --spec configs/sweeps/demo_cpu.py
  unimodal-sweep launch --spec configs/sweeps/demo_cpu.py --sweep_dir runs/sweep_demo_cpu --parallel 2
  unimodal-sweep collect --spec configs/sweeps/demo_cpu.py --sweep_dir runs/sweep_demo_cpu
  unimodal-sweep fit    --sweep_dir runs/sweep_demo_cpu --bootstrap 100
  unimodal-sweep plot   --sweep_dir runs/sweep_demo_cpu

Models of 83k-660k non-embedding parameters at 1-4 tokens per parameter, one stable WSD run per (variant, size) and
1-sqrt cooldown branches for the smaller budgets. It shows the machinery on real runs; the laws it fits describe
these toy models on a tiny dataset, nothing larger.
"""
import ml_collections


def get_config():
  s = ml_collections.ConfigDict()
  s.name = "demo_cpu"
  s.base_config = "../tiny.py"  # relative to this file
  s.family = ml_collections.ConfigDict(dict(
      head_dim=16, aspect_ratio=32, base_depth=2, depth_step=1, mlp_ratio=2.0, kv_group=1,
      base_lr=6e-3, base_width=64, lr_width_exponent=0.5))
  s.sizes = (0, 1, 2)
  s.budget_kind = "tokens_per_param"  # of s.param_count
  s.budgets = (1.0, 2.0, 4.0)
  s.param_count = "non_embedding"
  s.wsd = True
  s.cooldown_fraction = 0.2  # Hägele et al. 2024: 1-sqrt cooldown over 10-20% of the run
  s.steps_multiple = 10
  s.overrides = ("train.batch_size=16", "data.seq_len=128", "optim.warmup_steps=20", "optim.wsd_decay=sqrt",
                 "train.log_every=50", "eval.num_batches=8", "train.prefetch_batches=0")
  image_only = ("data.document_kinds=image_text_pair", "data.caption_first_ratio=1.0", "data.cfg_dropout=1.0")
  s.variants = ml_collections.ConfigDict({"mixed": (), "text": ("data.document_kinds=text",), "image": image_only})
  s.variant_sizes = ml_collections.ConfigDict({"text": (0, 2), "image": (0, 2)})
  s.mixed_modal = ("text", "image", "mixed")  # Aghajanyan et al. 2023's bimodal law
  return s
