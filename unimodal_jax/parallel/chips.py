"""Accelerator chips: usable HBM and dense bf16 peak FLOP/s per chip, found by generation or by JAX's device_kind.

The one table of per-chip numbers (sources: docs/topologies.md). plan/topology.py lays slices out on top of it; the
train loop takes MFU's peak from it. Describes hardware only; never touches a device.
"""
import dataclasses

GIB = 2**30


@dataclasses.dataclass(frozen=True)
class Chip:
  name: str  # the generation as accelerator types spell it: v5p
  device_kinds: tuple[str, ...]  # jax.Device.device_kind spellings (as in jax/_src/pallas/mosaic/tpu_info.py)
  hbm_bytes: int  # usable: the limit libtpu's compiler enforces (a little under the spec)
  peak_bf16_flops: float  # dense


CHIPS = {c.name: c for c in (
    Chip("v4", ("TPU v4",), int(30.75 * GIB), 275e12),
    Chip("v5e", ("TPU v5 lite", "TPU v5e"), int(15.75 * GIB), 197e12),
    Chip("v5p", ("TPU v5", "TPU v5p"), int(95.74 * GIB), 459e12),
    Chip("v6e", ("TPU v6 lite", "TPU v6e"), int(31.25 * GIB), 918e12),
)}


def chip_of_device_kind(device_kind: str) -> Chip | None:
  """The chip a JAX device of this kind is (v4 and v5p devices are whole megacore chips), or None if unknown."""
  return next((c for c in CHIPS.values() if device_kind in c.device_kinds), None)
