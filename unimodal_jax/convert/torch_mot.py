"""A short PyTorch reference of our transformer (dense or Mixture-of-Transformers) that loads a `to-torch` directory.

It runs packed rows (tokens, modality, segment ids, positions: causal within a document, blind across documents) in
float32; it is the parity oracle of the conversion tests and a starting point for PyTorch users, not a trainer.
It imports torch at the top: the rest of the package imports it only where torch is wanted (the `torch` extra).
"""
import json
import os

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

ARCHITECTURE = "UnimodalMoTForCausalLM"  # as convert/mot.py writes it


def routed(modules, x, expert):
  """x [b, s, ...] with each token through the module of its expert; one module = a weight all tokens share.

  Like BAGEL's packed indexing: expert i's module sees only the tokens with expert == i.
  """
  if len(modules) == 1:
    return modules[0](x)
  flat, expert = x.flatten(0, 1), expert.flatten()
  ys = [module(flat[expert == i]) for i, module in enumerate(modules)]
  out = ys[0].new_zeros(flat.shape[0], *ys[0].shape[1:])
  for i, y in enumerate(ys):
    out[expert == i] = y
  return out.unflatten(0, x.shape[:2])


def rope(x, positions, theta: float):
  """Rotary embedding, rotate-half convention. x [b, s, heads, d]; positions [b, s]."""
  half = x.shape[-1] // 2
  freq = theta ** (-torch.arange(half, dtype=torch.float32) / half)
  angle = positions[..., None].float() * freq
  cos, sin = angle.cos()[:, :, None], angle.sin()[:, :, None]
  x1, x2 = x.chunk(2, dim=-1)
  return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


def rope_interleaved(x, positions, theta: float):
  """Rotary embedding as Meta's original code writes it: the pairs (x[2i], x[2i+1]) as complex numbers, turned by
  e^(i * position * freq_i). Directories with `"rope_layout": "interleaved"` use it."""
  half = x.shape[-1] // 2
  freq = theta ** (-torch.arange(half, dtype=torch.float32) / half)
  angle = positions[..., None].float() * freq
  rotation = torch.polar(torch.ones_like(angle), angle)[:, :, None]  # [b, s, 1, half]
  pairs = torch.view_as_complex(x.float().unflatten(-1, (half, 2)).contiguous())
  return torch.view_as_real(pairs * rotation).flatten(-2)


ROPE = {"rotate_half": rope, "interleaved": rope_interleaved}


class RMSNorm(nn.Module):

  def __init__(self, dim: int, eps: float):
    super().__init__()
    self.weight, self.eps = nn.Parameter(torch.ones(dim)), eps

  def forward(self, x):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


class HeadNorm(nn.Module):
  """QK-norm over head_dim with per-head parameters (heads, head_dim): 'layernorm' (weight, bias) or 'rmsnorm'."""

  def __init__(self, kind: str, heads: int, head_dim: int, eps: float):
    super().__init__()
    self.kind, self.eps = kind, eps
    self.weight = nn.Parameter(torch.ones(heads, head_dim))
    self.bias = nn.Parameter(torch.zeros(heads, head_dim)) if kind == "layernorm" else None

  def forward(self, x):  # [..., heads, head_dim]
    if self.bias is not None:
      x = x - x.mean(-1, keepdim=True)
    y = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight
    return y if self.bias is None else y + self.bias


class Experts(nn.Module):
  """A module that holds `make()` once per suffix under BAGEL's names (`q_proj`, `q_proj_moe_gen`, ...)."""

  def add(self, name: str, suffixes, make):
    for suffix in suffixes:
      self.add_module(name + suffix, make())
    setattr(self, f"_{name}_suffixes", list(suffixes))

  def copies(self, name: str):
    return [getattr(self, name + suffix) for suffix in getattr(self, f"_{name}_suffixes")]


def suffixes(config, group: str):
  """The expert suffixes of a weight group: one per expert when it is untied, else one shared copy."""
  return config["expert_suffixes"] if group in config["mot_untied"] else [""]


class Attention(Experts):

  def __init__(self, c):
    super().__init__()
    e, self.h, self.kv, self.d = c["hidden_size"], c["num_attention_heads"], c["num_key_value_heads"], c["head_dim"]
    self.theta, attn, norms = c["rope_theta"], suffixes(c, "attention"), suffixes(c, "qk_norm")
    self.rope = ROPE[c.get("rope_layout", "rotate_half")]
    for name, n in (("q_proj", self.h), ("k_proj", self.kv), ("v_proj", self.kv)):
      self.add(name, attn, lambda n=n: nn.Linear(e, n * self.d, bias=c["attention_bias"]))
    self.add("o_proj", attn, lambda: nn.Linear(self.h * self.d, e, bias=False))
    self.qk_norm = c["qk_norm"] != "none"
    if self.qk_norm:
      for name, n in (("q_norm", self.h), ("k_norm", self.kv)):
        self.add(name, norms, lambda n=n: HeadNorm(c["qk_norm"], n, self.d, c["rms_norm_eps"]))

  def forward(self, x, expert, positions, mask):
    q, k, v = (routed(self.copies(name), x, expert).unflatten(-1, (-1, self.d))
               for name in ("q_proj", "k_proj", "v_proj"))
    if self.qk_norm:
      q, k = routed(self.copies("q_norm"), q, expert), routed(self.copies("k_norm"), k, expert)
    q, k = self.rope(q, positions, self.theta), self.rope(k, positions, self.theta)
    k, v = k.repeat_interleave(self.h // self.kv, dim=2), v.repeat_interleave(self.h // self.kv, dim=2)  # GQA
    scores = torch.einsum("bqhd,bkhd->bhqk", q, k) * self.d**-0.5
    probs = scores.masked_fill(~mask[:, None], float("-inf")).softmax(dim=-1)
    out = torch.einsum("bhqk,bkhd->bqhd", probs, v).flatten(2)
    return routed(self.copies("o_proj"), out, expert)


class MLP(nn.Module):
  """SwiGLU, Qwen2's names."""

  def __init__(self, embed: int, hidden: int):
    super().__init__()
    self.gate_proj, self.up_proj = nn.Linear(embed, hidden, bias=False), nn.Linear(embed, hidden, bias=False)
    self.down_proj = nn.Linear(hidden, embed, bias=False)

  def forward(self, x):
    return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(Experts):
  """'pre' (Qwen2, Chameleon-7B): h = x + attn(norm(x)); 'swin' (Chameleon-34B): h = x + norm(attn(x))."""

  def __init__(self, c):
    super().__init__()
    self.swin, e = c["swin_norm"], c["hidden_size"]
    self.self_attn = Attention(c)
    self.add("mlp", suffixes(c, "mlp"), lambda: MLP(e, c["intermediate_size"]))
    for name in ("input_layernorm", "post_attention_layernorm"):
      self.add(name, suffixes(c, "block_norms"), lambda: RMSNorm(e, c["rms_norm_eps"]))

  def forward(self, x, expert, positions, mask):
    attn_norm, mlp_norm = self.copies("input_layernorm"), self.copies("post_attention_layernorm")
    mlp = self.copies("mlp")
    if self.swin:
      h = x + routed(attn_norm, self.self_attn(x, expert, positions, mask), expert)
      return h + routed(mlp_norm, routed(mlp, h, expert), expert)
    h = x + self.self_attn(routed(attn_norm, x, expert), expert, positions, mask)
    return h + routed(mlp, routed(mlp_norm, h, expert), expert)


class Model(Experts):
  """The decoder stack under `model.` (Qwen2's layout); `norm_moe_gen` is BAGEL's final norm of the image expert."""

  def __init__(self, c):
    super().__init__()
    self.embed_tokens = nn.Embedding(c["vocab_size"], c["hidden_size"])
    self.layers = nn.ModuleList(DecoderLayer(c) for _ in range(c["num_hidden_layers"]))
    self.add("norm", suffixes(c, "final_norm"), lambda: RMSNorm(c["hidden_size"], c["rms_norm_eps"]))

  def forward(self, tokens, modality, segment_ids, positions):
    s = tokens.shape[1]
    mask = (segment_ids[:, :, None] == segment_ids[:, None, :]) & torch.ones(s, s, dtype=torch.bool).tril()
    x = self.embed_tokens(tokens)
    for layer in self.layers:
      x = layer(x, modality, positions, mask)
    return routed(self.copies("norm"), x, modality)


class MoTForCausalLM(nn.Module):

  def __init__(self, config: dict):
    super().__init__()
    if config.get("architectures") != [ARCHITECTURE]:
      raise ValueError(f"config.json architectures={config.get('architectures')}: expected [{ARCHITECTURE!r}]")
    self.config = config
    self.model = Model(config)
    if not config["tie_word_embeddings"]:
      self.lm_head = nn.Linear(config["hidden_size"], config["vocab_size"], bias=False)

  def forward(self, tokens, modality, segment_ids, positions):
    """All int [b, s] (modality: PackedBatch's, 0 text, 1 image codes = the expert) -> float32 logits [b, s, vocab]."""
    x = self.model(tokens, modality, segment_ids, positions)
    head = self.model.embed_tokens.weight if self.config["tie_word_embeddings"] else self.lm_head.weight
    return x @ head.T


def load(path: str) -> MoTForCausalLM:
  """The model of a `to-torch` directory, float32, in eval mode. A missing, unexpected or misshapen tensor raises
  torch's load_state_dict error, which names it."""
  with open(os.path.join(path, "config.json")) as f:
    config = json.load(f)
  index = os.path.join(path, "model.safetensors.index.json")
  if os.path.isfile(index):
    with open(index) as f:
      files = sorted(set(json.load(f)["weight_map"].values()))
  else:
    files = ["model.safetensors"]
  state = {}
  for filename in files:
    state.update(load_file(os.path.join(path, filename)))
  with torch.device("meta"):  # no memory for initial values: the loaded tensors become the parameters
    model = MoTForCausalLM(config)
  model.load_state_dict(state, strict=True, assign=True)
  return model.eval()
