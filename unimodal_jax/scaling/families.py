"""Size families (a rule from a size index to depth, width, heads and learning rate) and parameter counts.

`param_counts` is the one place that counts a model's parameters (tests check it against the initialised model).
"""
import dataclasses
import math

from unimodal_jax.config import check
from unimodal_jax.model import flops as flops_lib

FAMILY_KEYS = ("head_dim", "aspect_ratio", "base_depth", "depth_step", "mlp_ratio", "kv_group", "base_lr",
               "base_width", "lr_width_exponent")


@dataclasses.dataclass(frozen=True)
class ParamCounts:
  """Kaplan et al.'s N is `non_embedding`; for MoT, `active_*` counts one expert's copy (what a token uses)."""
  non_embedding: int
  embedding: int  # input table plus the output head unless tied
  total: int
  active_non_embedding: int
  active_total: int


def _copies(model, group: str) -> int:
  return model.num_experts if model.num_experts > 1 and group in model.mot_untied else 1


def param_counts(model) -> ParamCounts:
  """Parameters of `config.model` by weight group, as model/transformer.py creates them."""
  m = model
  heads = m.num_heads + 2 * m.num_kv_heads
  qk_heads = m.num_heads + m.num_kv_heads
  per_group = {  # per layer, one copy
      "attention": m.embed_dim * (heads + m.num_heads) * m.head_dim + (heads * m.head_dim if m.qkv_bias else 0),
      "qk_norm": {"layernorm": 2, "rmsnorm": 1, "none": 0}[m.qk_norm] * qk_heads * m.head_dim,
      "mlp": 3 * m.embed_dim * m.mlp_dim,
      "block_norms": 2 * m.embed_dim,
  }
  active = m.num_layers * sum(per_group.values()) + m.embed_dim
  stored = m.num_layers * sum(n * _copies(m, g) for g, n in per_group.items()) + m.embed_dim * _copies(m, "final_norm")
  embedding = m.vocab_size * m.embed_dim * (1 if m.tie_embeddings else 2)
  return ParamCounts(stored, embedding, stored + embedding, active, active + embedding)


def train_flops_per_token(config) -> float:
  return flops_lib.train_flops_per_token(config.model, config.data.seq_len)


def check_family(family):
  for key in FAMILY_KEYS:
    check(key in family, f"family.{key}", "missing from the sweep spec")
  for key in ("head_dim", "aspect_ratio", "base_depth", "kv_group", "base_width"):
    check(int(family[key]) == family[key] and family[key] > 0, f"family.{key}", f"must be an integer > 0, got "
          f"{family[key]!r}")
  check(family.depth_step >= 0, "family.depth_step", f"must be >= 0, got {family.depth_step}")
  check(family.mlp_ratio > 0 and family.base_lr > 0, "family.mlp_ratio", "mlp_ratio and base_lr must be > 0")


def size_rule(family, index: int) -> dict:
  """Model keys and learning rate of size `index`: depth grows by depth_step, width = aspect_ratio * depth rounded
  to whole heads of head_dim, MLP = mlp_ratio * width rounded to a multiple of 8, kv heads = heads / kv_group, and
  lr = base_lr * (base_width / width) ** lr_width_exponent (narrower models take larger steps)."""
  check(index >= 0, "sizes", f"size indices must be >= 0, got {index}")
  depth = family.base_depth + index * family.depth_step
  heads = max(1, round(family.aspect_ratio * depth / family.head_dim))
  width = heads * family.head_dim
  check(heads % family.kv_group == 0, "family.kv_group", f"size {index} has {heads} heads, not divisible by "
        f"kv_group={family.kv_group}")
  lr = family.base_lr * (family.base_width / width) ** family.lr_width_exponent
  return {"model.num_layers": depth, "model.embed_dim": width, "model.num_heads": heads,
          "model.num_kv_heads": heads // family.kv_group, "model.head_dim": family.head_dim,
          "model.mlp_dim": 8 * max(1, math.ceil(family.mlp_ratio * width / 8)), "optim.learning_rate": lr}
