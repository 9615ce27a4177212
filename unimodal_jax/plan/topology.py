"""TPU generations: slice layouts on top of the per-chip table (parallel/chips.py), and their devices for
ahead-of-time compilation on a host without TPUs.

Sources for every number: docs/topologies.md. This module describes hardware; it never touches a device.
"""
import dataclasses
import importlib.util
import math
import os
import re

from jax.experimental import topologies

from unimodal_jax import extras
from unimodal_jax.parallel.chips import CHIPS, Chip


@dataclasses.dataclass(frozen=True)
class Generation:
  chip: Chip  # its name is the generation's, as in accelerator types: v5p (of v5p-256)
  libtpu_name: str  # topology-name prefix get_topology_desc expects: v5:4x4x8
  chip_config_name: str  # 'megacore': the chip's two TensorCores act as one device
  dims: int  # 3: 3D torus (v4, v5p); 2: 2D torus (v5e, v6e)
  cores_per_chip: int  # accelerator types count TensorCores: v5p-256 is 128 chips
  chips_per_host: int  # in multi-host slices
  single_host_chips: int  # the largest slice one host drives

  @property
  def name(self) -> str:
    return self.chip.name

  @property
  def hbm_bytes(self) -> int:  # per chip, usable
    return self.chip.hbm_bytes

  @property
  def peak_bf16_flops(self) -> float:  # per chip
    return self.chip.peak_bf16_flops


GENERATIONS = {g.name: g for g in (
    Generation(CHIPS["v4"], "v4", "megacore", 3, 2, 4, 4),
    Generation(CHIPS["v5e"], "v5e", "default", 2, 1, 4, 8),
    Generation(CHIPS["v5p"], "v5", "megacore", 3, 2, 4, 4),
    Generation(CHIPS["v6e"], "v6e", "default", 2, 1, 4, 8),
)}


@dataclasses.dataclass(frozen=True)
class Topology:
  generation: Generation
  shape: tuple[int, ...]  # chips along each torus axis
  num_slices: int

  @property
  def chips(self) -> int:
    return math.prod(self.shape) * self.num_slices

  @property
  def name(self) -> str:
    cores = math.prod(self.shape) * self.generation.cores_per_chip
    slices = f" x {self.num_slices} slices" if self.num_slices > 1 else ""
    return f"{self.generation.name}-{cores} ({'x'.join(map(str, self.shape))}){slices}"


def slice_shape(generation: Generation, chips: int) -> tuple[int, ...]:
  """The standard slice shape of `chips` chips: from the smallest slice, double the shortest axis (ties: the last).

  Gives v5p 2x2x1, 2x2x2, 2x2x4, 2x4x4, 4x4x4, 4x4x8, ... and v5e/v6e 1x1, 1x2, 2x2, 2x4, 4x4, ..., 16x16.
  """
  shape = [2, 2, 1] if generation.dims == 3 else [1, 1]
  if chips < math.prod(shape) or chips & (chips - 1):
    raise ValueError(f"{generation.name}: no standard slice of {chips} chips (a power of two >= "
                     f"{math.prod(shape)}); give the shape instead, e.g. {generation.name}:4x4x12")
  while math.prod(shape) < chips:
    axis = max(i for i, n in enumerate(shape) if n == min(shape))
    shape[axis] *= 2
  return tuple(shape)


def parse(name: str, num_slices: int = 1) -> Topology:
  """'v5p-256' (an accelerator type: TensorCores for v4/v5p, chips for v5e/v6e) or 'v5p:4x4x8' (a shape)."""
  match = re.fullmatch(r"(v[0-9][a-z]?)(?:-([0-9]+)|:([0-9]+(?:x[0-9]+)*))", name)
  generation = GENERATIONS.get(match.group(1)) if match else None
  if generation is None:
    raise ValueError(f"unknown TPU topology {name!r}: expected <generation>-<cores> or <generation>:<shape> "
                     f"with a generation in {sorted(GENERATIONS)}, e.g. v5p-256, v5e-8, v5p:4x4x8")
  if num_slices < 1:
    raise ValueError(f"num_slices must be >= 1, got {num_slices}")
  if match.group(2):
    cores = int(match.group(2))
    if cores % generation.cores_per_chip:
      raise ValueError(f"{name}: {generation.name} counts {generation.cores_per_chip} cores per chip")
    shape = slice_shape(generation, cores // generation.cores_per_chip)
  else:
    shape = tuple(int(n) for n in match.group(3).split("x"))
    if len(shape) != generation.dims:
      raise ValueError(f"{name}: a {generation.name} slice shape has {generation.dims} axes")
  return Topology(generation, shape, num_slices)


def host_bounds(topology: Topology) -> tuple[int, int, int]:
  """Chips per host along each axis: the whole slice when one host drives it, else a 2x2 block."""
  if math.prod(topology.shape) <= topology.generation.single_host_chips:
    return (*topology.shape, 1)[:3]
  return (2, 2, 1)


def wraparound(topology: Topology) -> tuple[bool, bool, bool]:
  """Torus links per axis: 3D slices wrap on axes of whole 4-chip cubes edges; 2D slices on 16-chip axes."""
  if topology.generation.dims == 3:
    full_cubes = all(n % 4 == 0 for n in topology.shape)
    return tuple(full_cubes for _ in topology.shape)
  return tuple(n == 16 for n in topology.shape) + (False,)


def tpu_devices(name: str, num_slices: int = 1):
  """TPU devices of `name` (e.g. 'v5p-256', 'v5e-8', 'v6e:16x16') for AOT compilation; needs libtpu, no TPU."""
  if importlib.util.find_spec("libtpu") is None:
    raise extras.MissingExtraError("compiling for TPU on this host needs libtpu: pip install 'unimodal_jax[tpu]'",
                                   name="libtpu")
  # Compiling takes no TPU, so several processes (tests under xdist, a second plan) may load libtpu at once.
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  topology = parse(name, num_slices)
  desc = topologies.get_topology_desc(
      platform="tpu", topology_name=f"{topology.generation.libtpu_name}:{'x'.join(map(str, topology.shape))}",
      chip_config_name=topology.generation.chip_config_name, chips_per_host_bounds=host_bounds(topology),
      num_slices=num_slices, wrap=wraparound(topology))
  return desc.devices
