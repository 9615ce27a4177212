"""Mixture-of-Transformers routing (BAGEL; Liang et al. 2024): each token uses its modality's weight copy.

`grouped` runs each expert's matmul on its own tokens only (`jax.lax.ragged_dot`: a dense model's forward
FLOPs per token); `masked` runs every expert on every token and selects: the test oracle, and the
baseline the benchmarks compare against.
"""
import functools
import math

import flax.struct
import jax
import jax.numpy as jnp
from jax.experimental.pallas.ops.tpu.megablox import ops as megablox

from unimodal_jax.model import axes

IMPLEMENTATIONS = ("grouped", "masked")
_TILE = 128  # megablox tile (rows, contracting, output); other shapes use lax.ragged_dot


@flax.struct.dataclass
class Routing:
  expert: jax.Array  # [b, s] int32: each token's expert, i.e. its modality
  num_experts: int = flax.struct.field(pytree_node=False, default=2)
  impl: str = flax.struct.field(pytree_node=False, default="grouped")


def route(modality, num_experts: int, impl: str) -> Routing:
  return Routing(expert=modality.astype(jnp.int32), num_experts=num_experts, impl=impl)


def select(routing: Routing, param):
  """Each token's copy of an elementwise parameter: [experts, ...] -> [b, s, ...].

  A one-hot contraction rather than a gather: it partitions cleanly when the parameter is sharded.
  """
  onehot = jax.nn.one_hot(routing.expert, param.shape[0], dtype=param.dtype)
  return jnp.tensordot(onehot, param, axes=1)


def _grouped_matmul(lhs, rhs, group_sizes, use_kernel: bool):
  """lhs [m, k] (rows grouped) @ rhs [groups, k, n]. On TPU, with `use_kernel`, megablox's Pallas kernels
  (gmm; tgmm for the weight gradient, which `lax.ragged_dot`'s transpose computes for every group);
  elsewhere `lax.ragged_dot`."""
  (m, k), n = lhs.shape, rhs.shape[2]
  if not (use_kernel and m % _TILE == 0 and k % _TILE == 0 and n % _TILE == 0):  # the kernel's tiles
    return jax.lax.ragged_dot(lhs, rhs, group_sizes)
  kernel = functools.partial(megablox.gmm, preferred_element_type=lhs.dtype, tiling=(_TILE,) * 3)
  return jax.lax.platform_dependent(lhs, rhs, group_sizes, tpu=kernel, default=jax.lax.ragged_dot)


def _grouped_local(x, expert, kernels, num_experts: int, use_kernel: bool, reduce_axes=()):
  """One shard: its tokens sorted by expert, one grouped matmul per kernel, the result unsorted; partial
  products of a row-parallel kernel are summed over `reduce_axes`."""
  b, s, i = x.shape
  flat, e = x.reshape(b * s, i), expert.reshape(b * s)
  order = jnp.argsort(e, stable=True)
  inverse = jnp.argsort(order)
  sizes = jnp.sum(e[:, None] == jnp.arange(num_experts), axis=0, dtype=jnp.int32)
  grouped = flat[order]
  ys = [_grouped_matmul(grouped, k, sizes, use_kernel)[inverse].reshape(b, s, -1) for k in kernels]
  return [jax.lax.psum(y, reduce_axes) for y in ys] if reduce_axes else ys


def matmuls(routing: Routing, x, kernels, parallel: tuple[str, str]):
  """x [b, s, i] through each per-expert kernel [experts, i, o] -> a list of [b, s, o].

  `parallel` = (side, logical axis): tensor parallelism splits the kernels' 'out' dimension (column-
  parallel: q, k, v, wi) or their 'in' dimension (row-parallel: o, wo), along that logical axis.
  Grouped: under a mesh, a shard_map with every axis manual: each device sorts its own rows' tokens by
  expert (no token moves between devices), multiplies group by group (megablox on TPU, else
  `lax.ragged_dot`) with its slice of each kernel, unsorts, and sums row-parallel partial products.
  Kernels enter whole over the batch axes (the FSDP all-gather).
  """
  if routing.impl == "masked":
    onehot = jax.nn.one_hot(routing.expert, routing.num_experts, dtype=x.dtype)  # [b, s, experts]
    return [jnp.einsum("bsx,bsxo->bso", onehot, jnp.einsum("bsi,xio->bsxo", x, k)) for k in kernels]
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty:
    return _grouped_local(x, routing.expert, kernels, routing.num_experts, use_kernel=True)
  rows = axes.mesh_axes("activation_batch", mesh)
  if x.shape[0] % math.prod(mesh.shape[a] for a in rows):
    rows = ()  # e.g. the one-row batch of parameter initialisation: every device takes the whole batch
  side, logical = parallel
  tensor = axes.mesh_axes(logical, mesh)
  if any(mesh.shape[a] > 1 and a not in rows + tensor for a in mesh.axis_names):
    # A sharded axis this function does not split by hand: leave the whole computation to the compiler.
    return _grouped_local(x, routing.expert, kernels, routing.num_experts, use_kernel=False)
  P, r, t = jax.sharding.PartitionSpec, rows or None, tensor or None
  if side == "out":
    x_spec, k_spec, out_spec, reduce_axes = P(r, None, None), P(None, None, t), P(r, None, t), ()
  else:
    x_spec, k_spec, out_spec, reduce_axes = P(r, None, t), P(None, t, None), P(r, None, None), tensor
  local = functools.partial(_grouped_local, num_experts=routing.num_experts, use_kernel=True,
                            reduce_axes=reduce_axes)
  return jax.shard_map(local, mesh=mesh, in_specs=(x_spec, P(r), k_spec), out_specs=out_spec,
                       axis_names=set(mesh.axis_names), check_vma=False)(x, routing.expert, kernels)


def upcycle(dense_params, mot_logical_specs, num_experts: int):
  """MoT params in which every expert's copy is the dense model's weight (BAGEL initialises its
  generation expert from the understanding weights). `mot_logical_specs`: the MoT model's logical
  PartitionSpecs, whose `expert` entry says where each untied weight gains its expert axis."""
  def one(dense, spec):
    if "expert" not in tuple(spec):
      return dense
    axis = tuple(spec).index("expert")
    return jnp.repeat(jnp.expand_dims(dense, axis), num_experts, axis=axis)

  return jax.tree.map(one, dense_params, mot_logical_specs)
