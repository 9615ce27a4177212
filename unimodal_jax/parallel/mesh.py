"""The ('data', 'fsdp', 'tensor') device mesh and the one place logical axis names become shardings.

Models name axes logically (`embed`, `heads`, ...); `config.logical_axis_rules` maps them to mesh axes.
"""
import contextlib
import math

import flax.linen as nn
import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from unimodal_jax.config import MESH_AXES

BATCH_AXES = ("data", "fsdp")


def dcn_shape(mesh_config) -> tuple[int, ...]:
  """Sizes of ('data', 'fsdp', 'tensor') across slices (data-center network); all 1 within one slice."""
  sizes = tuple(int(mesh_config[f"dcn_{a}"]) for a in MESH_AXES)
  if min(sizes) < 1:
    raise ValueError(f"config.mesh: dcn_* sizes must be >= 1, got {dict(zip(MESH_AXES, sizes))}")
  return sizes


def ici_shape(mesh_config, num_devices: int) -> tuple[int, ...]:
  """Resolve the config's per-slice mesh sizes; at most one may be -1 (all remaining devices of a slice)."""
  slices = math.prod(dcn_shape(mesh_config))
  if num_devices % slices:
    raise ValueError(f"config.mesh: {num_devices} devices do not split into dcn_* = {slices} slices")
  per_slice = num_devices // slices
  sizes = [int(mesh_config[a]) for a in MESH_AXES]
  free = [a for a, s in zip(MESH_AXES, sizes) if s == -1]
  if len(free) > 1:
    raise ValueError(f"config.mesh: at most one axis may be -1, got {dict(zip(MESH_AXES, sizes))}")
  fixed = math.prod(s for s in sizes if s != -1)
  if free:
    if per_slice % fixed:
      raise ValueError(f"config.mesh: {per_slice} devices per slice are not divisible by the fixed axes "
                       f"{dict(zip(MESH_AXES, sizes))} (product {fixed})")
    sizes[MESH_AXES.index(free[0])] = per_slice // fixed
  if math.prod(sizes) != per_slice:
    raise ValueError(f"config.mesh: shape {dict(zip(MESH_AXES, sizes))} uses {math.prod(sizes)} devices, "
                     f"but {per_slice} are available" + (f" per slice ({slices} slices)" if slices > 1 else ""))
  return tuple(sizes)


def mesh_shape(mesh_config, num_devices: int) -> tuple[int, ...]:
  """Whole-mesh sizes of ('data', 'fsdp', 'tensor'): per-slice sizes times their dcn_* multipliers."""
  return tuple(i * d for i, d in zip(ici_shape(mesh_config, num_devices), dcn_shape(mesh_config)))


def create_mesh(mesh_config, devices=None) -> Mesh:
  """The device mesh; with dcn_* > 1, a hybrid mesh whose dcn axes cross slices (`device.slice_index`)."""
  devices = jax.devices() if devices is None else devices
  ici, dcn = ici_shape(mesh_config, len(devices)), dcn_shape(mesh_config)
  if math.prod(dcn) > 1:
    device_grid = mesh_utils.create_hybrid_device_mesh(ici, dcn, devices=devices, allow_split_physical_axes=True)
  else:
    device_grid = mesh_utils.create_device_mesh(ici, devices=devices, allow_split_physical_axes=True)
  # Auto axis types: linen's sharding annotations need them (Explicit is jax.make_mesh's default).
  return Mesh(device_grid, MESH_AXES, axis_types=(jax.sharding.AxisType.Auto,) * len(MESH_AXES))


def axis_rules(config) -> tuple:
  """config.logical_axis_rules as the tuple of (logical, mesh axes) pairs flax expects."""
  return tuple((name, tuple(axes) if isinstance(axes, (list, tuple)) else axes)
               for name, axes in config.logical_axis_rules)


def logical_to_shardings(logical_specs, mesh: Mesh, rules):
  """Map a pytree of logical PartitionSpecs to NamedShardings on `mesh`."""
  return nn.logical_to_mesh_sharding(logical_specs, mesh, rules)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Rows over ('data', 'fsdp'), sequence replicated."""
  return NamedSharding(mesh, P(BATCH_AXES, None))


def global_batch(local_batch, mesh: Mesh):
  """Host-local numpy PackedBatch -> global jax.Arrays; each process contributes its rows.

  One call for the whole tree: on one process that is a single device_put, half the host time of one per field.
  """
  return jax.make_array_from_process_local_data(batch_sharding(mesh), jax.tree.map(np.asarray, local_batch))


@contextlib.contextmanager
def mesh_context(mesh: Mesh, rules):
  """The context every jitted model call runs in: the mesh and the logical axis rules."""
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    yield
