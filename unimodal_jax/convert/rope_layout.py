"""Interleaved rotary layout (Meta's original Llama/Chameleon code) -> rotate-half (our model, transformers).

Interleaved RoPE rotates the pairs (x[2i], x[2i+1]) of each head; rotate-half rotates (x[i], x[i + d/2]). Moving
entry 2i + a of every head to a * d/2 + i, in the rows of wq and wk (and in q/k biases and QK-norm parameters,
which act per entry of head_dim), makes rotate-half on the permuted weights give the same attention scores.
"""
import numpy as np


def half_order(head_dim: int) -> np.ndarray:
  """new[j] = old[half_order[j]] within one head: the even entries, then the odd ones."""
  if head_dim % 2:
    raise ValueError(f"head_dim={head_dim}: rotary embeddings need an even head_dim")
  return np.concatenate([np.arange(0, head_dim, 2), np.arange(1, head_dim, 2)])


def projection_to_half(w: np.ndarray, num_heads: int) -> np.ndarray:
  """A q or k projection in PyTorch's layout, weight [heads * head_dim, in] or bias [heads * head_dim]."""
  head_dim, rest = w.shape[0] // num_heads, w.shape[1:]
  if head_dim * num_heads != w.shape[0]:
    raise ValueError(f"{w.shape[0]} output rows do not split into {num_heads} heads")
  return w.reshape(num_heads, head_dim, *rest)[:, half_order(head_dim)].reshape(w.shape)


def qk_norm_to_half(p: np.ndarray, num_heads: int) -> np.ndarray:
  """A QK-norm weight or bias -> [heads, head_dim]. Meta's checkpoints hold one [head_dim] vector shared by all heads
  (or one per model-parallel shard, [shards, head_dim], each shared by that shard's heads); [heads, head_dim] is
  permuted as it is."""
  rows = p.reshape(-1, p.shape[-1])
  if num_heads % rows.shape[0]:
    raise ValueError(f"QK-norm parameters of shape {p.shape} do not spread over {num_heads} heads")
  return np.repeat(rows[:, half_order(p.shape[-1])], num_heads // rows.shape[0], axis=0)
