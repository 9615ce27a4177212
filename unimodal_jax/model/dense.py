"""Expert-aware weights: the one place a parameter gains a per-expert copy (Mixture-of-Transformers) and a token
picks its expert's copy (model/experts.py routes). Attention, MLP and norms build on these and read as dense code.

Both modules live in their parent's scope, so parameters keep the parent's names (`attn/q_kernel`,
`attn_norm/scale`): the tree checkpoints and converters know, dense or MoT.
"""
import math

import flax.linen as nn
import jax.numpy as jnp

from unimodal_jax.model import experts


def copies(config, group: str) -> int:
  """How many copies of the weights in `group` (config.MOT_GROUPS) the model holds: 1 = tied/dense."""
  return config.num_experts if config.num_experts > 1 and group in config.mot_untied else 1


def param(module: nn.Module, name: str, init, shape, axes, copies: int = 1):
  """A float32 parameter with logical axes; `copies` > 1 adds a leading `expert` axis (one copy per expert)."""
  if copies > 1:
    shape, axes = (copies, *shape), ("expert", *axes)
  return module.param(name, nn.with_logical_partitioning(init, axes), shape, jnp.float32)


def _per_token(value, routing, copies: int):
  """An elementwise parameter as each token sees it: with copies > 1, its expert's copy [b, s, ...]."""
  return experts.select(routing, value) if copies > 1 else value


class ExpertDense(nn.Module):
  """Projections of one input x [b, s, *in] by kernels [(experts,) *in, *out] (plus optional biases [(experts,) *out])
  -> one [b, s, *out] per kernel, in the compute dtype of x.

  With `copies` > 1 each token is multiplied by its own expert's kernel (`routing`); the kernels of one call share
  the routing work (one sort of the tokens by expert). Kernels start as N(0, 1/fan_in), biases at zero.
  """

  kernels: tuple  # ((name, out shape, out logical axes), ...)
  in_axes: tuple  # logical axes of x's feature dims, the kernels' leading dims
  parallel: tuple  # (side, activation axis) tensor parallelism splits: ('out', ...) column-, ('in', ...) row-parallel
  copies: int = 1
  biases: tuple = ()  # one bias name per kernel, or () for none

  def setup(self):
    nn.share_scope(self.parent, self)

  @nn.compact
  def __call__(self, x, routing=None):
    b, s, *features_in = x.shape
    fan_in = math.prod(features_in)
    init = nn.initializers.normal(stddev=fan_in**-0.5)
    kernels = [param(self, name, init, (*features_in, *shape), (*self.in_axes, *axes), self.copies)
               for name, shape, axes in self.kernels]
    flat_x = x.reshape(b, s, fan_in)
    flat = [k.reshape(*k.shape[:self.copies > 1], fan_in, -1).astype(x.dtype) for k in kernels]
    if self.copies > 1:
      ys = experts.matmuls(routing, flat_x, flat, self.parallel)
    else:
      ys = [flat_x @ k for k in flat]
    ys = [y.reshape(b, s, *shape) for y, (_, shape, _) in zip(ys, self.kernels)]
    for i, (name, (_, shape, axes)) in enumerate(zip(self.biases, self.kernels)):
      bias = param(self, name, nn.initializers.zeros, shape, axes, self.copies)
      ys[i] = ys[i] + _per_token(bias, routing, self.copies).astype(x.dtype)
    return ys


class ExpertScale(nn.Module):
  """x * scale (+ bias) over the trailing dims `x.shape[-len(axes):]`, per token with its expert's copy: the affine
  part of a norm. Computed in float32 (x's dtype), scale starts at one and bias at zero."""

  axes: tuple  # logical axes of the trailing dims
  copies: int = 1
  bias: bool = False

  def setup(self):
    nn.share_scope(self.parent, self)

  @nn.compact
  def __call__(self, x, routing=None):
    shape = x.shape[x.ndim - len(self.axes):]
    y = x * _per_token(param(self, "scale", nn.initializers.ones, shape, self.axes, self.copies), routing, self.copies)
    if self.bias:
      y = y + _per_token(param(self, "bias", nn.initializers.zeros, shape, self.axes, self.copies), routing, self.copies)
    return y
