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


def mesh_shape(mesh_config, num_devices: int) -> tuple[int, ...]:
  """Resolve the config's mesh sizes; at most one may be -1 (all remaining devices)."""
  sizes = [int(mesh_config[a]) for a in MESH_AXES]
  free = [a for a, s in zip(MESH_AXES, sizes) if s == -1]
  if len(free) > 1:
    raise ValueError(f"config.mesh: at most one axis may be -1, got {dict(zip(MESH_AXES, sizes))}")
  fixed = math.prod(s for s in sizes if s != -1)
  if free:
    if num_devices % fixed:
      raise ValueError(f"config.mesh: {num_devices} devices are not divisible by the fixed axes "
                       f"{dict(zip(MESH_AXES, sizes))} (product {fixed})")
    sizes[MESH_AXES.index(free[0])] = num_devices // fixed
  if math.prod(sizes) != num_devices:
    raise ValueError(f"config.mesh: shape {dict(zip(MESH_AXES, sizes))} uses {math.prod(sizes)} devices, "
                     f"but {num_devices} are available")
  return tuple(sizes)


def create_mesh(mesh_config, devices=None) -> Mesh:
  devices = jax.devices() if devices is None else devices
  shape = mesh_shape(mesh_config, len(devices))
  device_grid = mesh_utils.create_device_mesh(shape, devices=devices, allow_split_physical_axes=True)
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
  """Host-local numpy PackedBatch -> global jax.Arrays; each process contributes its rows."""
  sharding = batch_sharding(mesh)
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), local_batch)


@contextlib.contextmanager
def mesh_context(mesh: Mesh, rules):
  """The context every jitted model call runs in: the mesh and the logical axis rules."""
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    yield
