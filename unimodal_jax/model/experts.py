"""Mixture-of-Transformers routing (BAGEL; Liang et al. 2024): each token uses its modality's weight copy.

`grouped` runs each expert's matmul on its own tokens only (`jax.lax.ragged_dot`: a dense model's forward
FLOPs per token); `masked` runs every expert on every token and selects: the test oracle, and the
baseline the benchmarks compare against.
"""
import functools
import math

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
from jax.experimental.pallas.ops.tpu.megablox import ops as megablox

IMPLEMENTATIONS = ("grouped", "masked")
_TILE = 128  # megablox tile (rows, contracting, output); other shapes use lax.ragged_dot
GROUPS = ("attention", "qk_norm", "mlp", "block_norms", "final_norm")  # weight groups that can be untied


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


def _grouped_local(x, expert, kernels, num_experts: int, use_kernel: bool):
  """One batch shard: its tokens sorted by expert, one grouped matmul per kernel, the result unsorted."""
  b, s, i = x.shape
  flat, e = x.reshape(b * s, i), expert.reshape(b * s)
  order = jnp.argsort(e, stable=True)
  inverse = jnp.argsort(order)
  sizes = jnp.sum(e[:, None] == jnp.arange(num_experts), axis=0, dtype=jnp.int32)
  grouped = flat[order]
  return [_grouped_matmul(grouped, k, sizes, use_kernel)[inverse].reshape(b, s, -1) for k in kernels]


def _batch_mesh_axes(batch_size: int):
  """Mesh axes the batch is sharded over in the current mesh/rules context; empty outside one, or when
  `batch_size` does not divide over them (e.g. the one-row batch of parameter initialisation)."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty:
    return ()
  axes = nn.logical_to_mesh_axes(("activation_batch",))[0]
  axes = (axes,) if isinstance(axes, str) else tuple(axes or ())
  axes = tuple(a for a in axes if mesh.shape[a] > 1)
  return axes if batch_size % math.prod(mesh.shape[a] for a in axes) == 0 else ()


def matmuls(routing: Routing, x, kernels):
  """x [b, s, i] through each per-expert kernel [experts, i, o] -> a list of [b, s, o].

  Grouped: within each batch shard (shard_map over the batch's mesh axes, so sorting never moves
  tokens across devices) tokens are sorted by expert once for all kernels, multiplied group by group
  with `lax.ragged_dot`, and unsorted. Kernels enter whole over the batch axes (the FSDP all-gather);
  other axes (tensor parallelism) stay with the compiler.
  """
  if routing.impl == "masked":
    onehot = jax.nn.one_hot(routing.expert, routing.num_experts, dtype=x.dtype)  # [b, s, experts]
    return [jnp.einsum("bsx,bsxo->bso", onehot, jnp.einsum("bsi,xio->bsxo", x, k)) for k in kernels]
  axes = _batch_mesh_axes(x.shape[0])
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty:
    return _grouped_local(x, routing.expert, kernels, routing.num_experts, use_kernel=True)
  # The Pallas kernel cannot be split by the compiler: it runs only where every sharded axis is manual.
  whole = all(mesh.shape[a] == 1 or a in axes for a in mesh.axis_names)
  manual = set(mesh.axis_names) if whole else set(axes)
  local = functools.partial(_grouped_local, num_experts=routing.num_experts, use_kernel=whole)
  if not manual:
    return local(x, routing.expert, kernels)
  rows, whole_array = jax.sharding.PartitionSpec(axes or None), jax.sharding.PartitionSpec()
  return jax.shard_map(local, mesh=mesh, in_specs=(rows, rows, whole_array), out_specs=rows, axis_names=manual,
                       check_vma=False)(x, routing.expert, kernels)


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
