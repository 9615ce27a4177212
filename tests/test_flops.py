"""Model FLOPs per token (for MFU) against XLA's own count of the compiled forward pass."""
import jax
import pytest

from unimodal_jax.config import default_config
from unimodal_jax.model import flops
from unimodal_jax.model.transformer import Transformer
from unimodal_jax.train import state as state_lib


@pytest.mark.parametrize("kv_heads", [8, 2])
def test_forward_flops_match_xla_cost_analysis(kv_heads):
  m = default_config().model
  m.num_layers, m.embed_dim, m.num_heads, m.num_kv_heads, m.head_dim, m.mlp_dim = 1, 512, 8, kv_heads, 64, 1536
  seq_len, rows = 128, 2
  model, inputs = Transformer(m), state_lib.dummy_inputs(seq_len, rows)
  params = jax.eval_shape(lambda: state_lib.init_params(model, jax.random.key(0), seq_len))
  compiled = jax.jit(lambda p, x: model.apply({"params": p}, **x)).lower(params, inputs).compile()
  xla = compiled.cost_analysis()["flops"]
  # XLA computes the whole masked score matrix: twice the causal count flops.py uses for MFU.
  full_square = flops.forward_flops_per_token(m, seq_len) + flops.attention_flops(m, seq_len)
  assert abs(xla / (rows * seq_len * full_square) - 1) < 0.02


def test_mot_counts_one_expert_per_token():
  m = default_config().model
  mot = m.copy_and_resolve_references()
  mot.num_experts = 2
  assert flops.train_flops_per_token(mot, 256) == flops.train_flops_per_token(m, 256) == \
      3 * flops.forward_flops_per_token(m, 256)
