"""Validation of the `config.model` keys that do not depend on the mesh (architecture, MoT, attention, dtype)."""
from unimodal_jax.config import MOT_GROUPS, check as _check
from unimodal_jax.data.vocab import MODALITIES
from unimodal_jax.model import attention, experts
from unimodal_jax.model.transformer import REMAT_POLICIES

NORM_ORDERS = ("pre", "swin")
QK_NORMS = ("none", "layernorm", "rmsnorm")
DTYPES = ("float32", "bfloat16", "float16")


def check(config) -> None:
  m = config.model
  remat = ("none", *REMAT_POLICIES)
  _check(m.norm_order in NORM_ORDERS, "model.norm_order", f"{m.norm_order!r} is not one of {NORM_ORDERS}")
  _check(m.qk_norm in QK_NORMS, "model.qk_norm", f"{m.qk_norm!r} is not one of {QK_NORMS}")
  _check(m.remat_policy in remat, "model.remat_policy", f"{m.remat_policy!r} is not one of {remat}")
  _check(m.attention in attention.IMPLEMENTATIONS, "model.attention",
         f"{m.attention!r} is not one of {attention.IMPLEMENTATIONS}")
  _check(m.num_experts in (1, len(MODALITIES)), "model.num_experts",
         f"{m.num_experts}: 1 (dense) or {len(MODALITIES)} (one expert per modality {MODALITIES})")
  unknown = set(m.mot_untied) - set(MOT_GROUPS)
  _check(not unknown, "model.mot_untied", f"unknown groups {sorted(unknown)}; known: {MOT_GROUPS}")
  _check(m.mot_impl in experts.IMPLEMENTATIONS, "model.mot_impl",
         f"{m.mot_impl!r} is not one of {experts.IMPLEMENTATIONS}")
  _check(m.dtype in DTYPES, "model.dtype", f"{m.dtype!r} is not one of {DTYPES}")
  for key in ("num_layers", "embed_dim", "num_heads", "num_kv_heads", "head_dim", "mlp_dim"):
    _check(m[key] >= 1, f"model.{key}", f"must be >= 1, got {m[key]}")
  _check(m.num_heads % m.num_kv_heads == 0, "model.num_kv_heads",
         f"num_heads={m.num_heads} is not divisible by num_kv_heads={m.num_kv_heads}")
  _check(m.head_dim % 2 == 0, "model.head_dim", f"RoPE needs an even head_dim, got {m.head_dim}")
  _check(m.loss_chunk_size >= 0 and (m.loss_chunk_size == 0 or config.data.seq_len % m.loss_chunk_size == 0),
         "model.loss_chunk_size", f"{m.loss_chunk_size} must be 0 (off) or a positive divisor of data.seq_len="
         f"{config.data.seq_len}")
  _check(0.0 <= m.dropout_rate < 1.0, "model.dropout_rate", f"must be in [0, 1), got {m.dropout_rate}")
  _check(m.rope_theta > 0, "model.rope_theta", f"must be > 0, got {m.rope_theta}")
  _check(m.norm_eps > 0, "model.norm_eps", f"must be > 0, got {m.norm_eps}")
  _check(m.z_loss >= 0, "model.z_loss", f"must be >= 0, got {m.z_loss}")
  _check(m.vocab_size >= 1, "model.vocab_size", f"must be >= 1, got {m.vocab_size}")
