"""CI guard: every shipped large config fits the TPU slice its docstring names ("Target slice: v5p-256"), as
shipped (batch, gradient accumulation, remat, chunked loss, attention "auto" = splash on TPU).

The train step is compiled ahead of time for the slice (libtpu on this CPU host, no TPU) at 2 and 3 layers, and
the per-chip memory extrapolated linearly to the full depth (plan.planner.memory_from_depths). Checked against
full-depth compiles (2026-12-03, jax 0.10.2, libtpu 0.0.42.1; docs/pod_plans.md), peak estimate extrapolated vs
full: Chameleon-7B on v5p-256 46.42 vs 42.89 GiB (+8.2%), Chameleon-34B on v5p-512 62.54 vs 56.82 GiB (+10.1%),
MoT-7B on v5p-256 58.77 vs 61.40 GiB (-4.3%). So it catches a config clearly over the chip, not one within ~10% of
it (the full plan decides those). Slow: two compiles for 128-256 chips per config, ~7 CPU-minutes per test on
the 2-core development machine (~40 minutes in all), so the compiling guard runs only with UNIMODAL_POD_GUARD=1
(before changing a shipped large config or the model's memory); by default only the cheap checks run: each config
names its slice and validates for its chip count.
"""
import os
import re

import pytest

from unimodal_jax.config import load_config_file
from unimodal_jax.plan import planner, topology
from unimodal_jax.train import validate as validate_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHIPPED = ["chameleon_7b", "chameleon_34b", "mot_chameleon_7b", "mot_chameleon_34b", "mot_bagel_7b"]


def target_slice(name: str) -> str:
  """The slice a config's docstring names, e.g. 'Target slice: v5p-256 (128 chips)' -> 'v5p-256'."""
  path = os.path.join(REPO, "configs", f"{name}.py")
  found = re.search(r"Target slice: (v\w+-\d+)", open(path).read())
  assert found, f"{path}: its docstring must name its TPU slice as 'Target slice: <accelerator type>'"
  return found.group(1)


# MoT-34B on v5p-512: the 3-layer compile peaks below the 2-layer one, so the straight line goes negative (-19.74
# GiB at 48 layers, 2026-12-03); memory_from_depths now refuses it. The full plan fits (74.58 GiB, docs/pod_plans.md).
NOT_LINEAR = pytest.mark.xfail(raises=ValueError, strict=True, reason="MoT-34B: peak falls from 2 to 3 layers")


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_config_names_its_slice_and_validates_for_it(name):
  config = planner.planning_config(load_config_file(os.path.join(REPO, "configs", f"{name}.py")))
  chips = topology.parse(target_slice(name)).chips
  data, fsdp, tensor = validate_lib.validate(config, chips)
  assert data * fsdp * tensor == chips
  assert config.train.batch_size == 2048 and config.data.seq_len == 4096  # Chameleon's global batch


@pytest.mark.skipif(os.environ.get("UNIMODAL_POD_GUARD") != "1", reason="~7 CPU-minutes per config: set "
                    "UNIMODAL_POD_GUARD=1 to compile the shipped large configs for their slices")
@pytest.mark.parametrize("name", [pytest.param(n, marks=NOT_LINEAR) if n == "mot_chameleon_34b" else n
                                  for n in SHIPPED])
def test_shipped_config_fits_its_target_slice(name):
  pytest.importorskip("libtpu", reason="AOT compiles for TPU need libtpu (pip install -e '.[tpu]')")
  config = planner.planning_config(load_config_file(os.path.join(REPO, "configs", f"{name}.py")))
  slice_name = target_slice(name)
  devices = topology.tpu_devices(slice_name)
  hbm = topology.parse(slice_name).generation.hbm_bytes
  memory = planner.extrapolated_memory(config, devices)
  assert memory.peak <= hbm, (f"configs/{name}.py does not fit {slice_name}: {memory.peak / 2**30:.2f} GiB per chip "
                              f"(extrapolated from {planner.QUICK_DEPTHS} layers) > {hbm / 2**30:.2f} GiB usable; "
                              f"unimodal-plan --config configs/{name}.py --topology {slice_name}")
  print(f"{name} on {slice_name}: {memory.peak / 2**30:.2f} of {hbm / 2**30:.2f} GiB per chip")
