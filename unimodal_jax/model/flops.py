"""Model FLOPs per token from the model's dimensions (for MFU), counting only the weights a token uses.

A Mixture-of-Transformers token passes through one expert's copy, so MoT and dense share one count.
"""


def layer_matmul_flops(m) -> int:
  """Forward FLOPs per token of one layer's projections: q, k, v, o and the SwiGLU MLP (2 per MAC)."""
  q_o = 2 * m.embed_dim * m.num_heads * m.head_dim
  k_v = 2 * m.embed_dim * m.num_kv_heads * m.head_dim
  mlp = 3 * m.embed_dim * m.mlp_dim
  return 2 * (q_o + k_v + mlp)


def attention_flops(m, seq_len: int) -> float:
  """Forward FLOPs per token of one layer's causal attention (scores + weighted values, half the square)."""
  return 2 * 2 * m.num_heads * m.head_dim * seq_len / 2


def forward_flops_per_token(m, seq_len: int) -> float:
  return m.num_layers * (layer_matmul_flops(m) + attention_flops(m, seq_len)) + 2 * m.embed_dim * m.vocab_size


def train_flops_per_token(m, seq_len: int) -> float:
  """Forward + backward (2x forward), without rematerialisation: the MFU convention of PaLM and MaxText."""
  return 3 * forward_flops_per_token(m, seq_len)
