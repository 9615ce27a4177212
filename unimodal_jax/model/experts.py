"""Mixture-of-Transformers routing (BAGEL; Liang et al. 2024): each token uses its modality's weight copy.

`route` groups each row's tokens by expert once per forward pass. `grouped` runs each expert's matmul on
its own tokens only (`jax.lax.ragged_dot_general`: a dense model's FLOPs per token); `masked` runs every
expert on every token and selects: the test oracle, and the baseline the benchmarks compare against.
"""
import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp

IMPLEMENTATIONS = ("grouped", "masked")
GROUPS = ("attention", "qk_norm", "mlp", "block_norms", "final_norm")  # weight groups that can be untied

# x [b, s, i] (ragged along s, one group per expert, per row b) times kernel [experts, i, o] -> [b, s, o].
_RAGGED_DIMS = jax.lax.RaggedDotDimensionNumbers(
    dot_dimension_numbers=(([2], [1]), ([], [])), lhs_ragged_dimensions=[1], rhs_group_dimensions=[0])


@flax.struct.dataclass
class Routing:
  expert: jax.Array  # [b, s] int32: each token's expert, i.e. its modality
  order: jax.Array  # [b, s]: the row's positions sorted by expert (stable)
  inverse: jax.Array  # [b, s]: the inverse permutation of `order`
  group_sizes: jax.Array  # [b, num_experts] int32
  impl: str = flax.struct.field(pytree_node=False, default="grouped")


def route(modality, num_experts: int, impl: str) -> Routing:
  expert = modality.astype(jnp.int32)
  order = jnp.argsort(expert, axis=-1, stable=True)
  group_sizes = jnp.sum(expert[..., None] == jnp.arange(num_experts), axis=1, dtype=jnp.int32)
  return Routing(expert=expert, order=order, inverse=jnp.argsort(order, axis=-1), group_sizes=group_sizes,
                 impl=impl)


def select(routing: Routing, param):
  """Each token's copy of an elementwise parameter: [experts, ...] -> [b, s, ...].

  A one-hot contraction rather than a gather: it partitions cleanly when the parameter is sharded.
  """
  onehot = jax.nn.one_hot(routing.expert, param.shape[0], dtype=param.dtype)
  return jnp.tensordot(onehot, param, axes=1)


def _keep_rows_sharded(x):
  """Pin the batch axis of a sorted/grouped array to the batch sharding; features stay free."""
  free = jax.sharding.PartitionSpec.UNCONSTRAINED
  return nn.with_logical_constraint(x, ("activation_batch", free, free))


def matmuls(routing: Routing, x, kernels):
  """x [b, s, i] through each per-expert kernel [experts, i, o] -> a list of [b, s, o].

  Grouped: the rows are sorted by expert once for all kernels, multiplied group by group, unsorted.
  """
  if routing.impl == "masked":
    onehot = jax.nn.one_hot(routing.expert, kernels[0].shape[0], dtype=x.dtype)  # [b, s, experts]
    return [jnp.einsum("bsx,bsxo->bso", onehot, jnp.einsum("bsi,xio->bsxo", x, k)) for k in kernels]
  grouped = _keep_rows_sharded(jnp.take_along_axis(x, routing.order[..., None], axis=1))
  outs = [_keep_rows_sharded(jax.lax.ragged_dot_general(grouped, k, routing.group_sizes, _RAGGED_DIMS))
          for k in kernels]
  return [_keep_rows_sharded(jnp.take_along_axis(y, routing.inverse[..., None], axis=1)) for y in outs]


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
