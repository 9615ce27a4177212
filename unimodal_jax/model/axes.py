"""Logical axis name -> the mesh axes it is sharded over under the current rules: the one lookup the model's
hand-partitioned code (the embedding lookup, MoT's grouped matmuls) makes."""
import flax.linen as nn


def mesh_axes(logical: str, mesh) -> tuple[str, ...]:
  """The mesh axes of size > 1 that `logical` maps to under the flax logical axis rules in effect."""
  axes = nn.logical_to_mesh_axes((logical,))[0]
  axes = (axes,) if isinstance(axes, str) else tuple(axes or ())
  return tuple(a for a in axes if mesh.shape[a] > 1)
