"""CI guard: every shipped large config fits the TPU slice its docstring names ("Target slice: v5p-256"), as
shipped (batch, gradient accumulation, remat, chunked loss, attention "auto" = splash on TPU).

The train step is compiled ahead of time for the slice (libtpu on this CPU host, no TPU) at its full depth, and the
compiler's per-chip memory (the planner's peak estimate) must be within the chip's HBM. Not at reduced depth with the
memory extrapolated, as first planned: the layers are one `nn.scan`, so a compile costs about the same at 2 layers as
at 48, and extrapolating from 2 and 3 layers (`unimodal-plan --quick`,
plan.planner.memory_from_depths) was off by -4% to +10% against full-depth compiles and meaningless for MoT-34B,
whose 3-layer peak is below its 2-layer one (docs/pod_plans.md). One exact compile per config costs half of the two
reduced ones.

It runs in CI as its own step of .ci/run (UNIMODAL_POD_GUARD=1, after the README's test command, which skips it to
stay within its time): one compile for 128-256 chips per config, all five ~11 minutes on 2 cores (CI of stop 19:
1,991 s in all against 1,302 s without the step). By default only the cheap checks run: each
config names its slice and validates for its chip count at Chameleon's batch.
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


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_config_names_its_slice_and_validates_for_it(name):
  config = planner.planning_config(load_config_file(os.path.join(REPO, "configs", f"{name}.py")))
  chips = topology.parse(target_slice(name)).chips
  data, fsdp, tensor = validate_lib.validate(config, chips)
  assert data * fsdp * tensor == chips
  assert config.train.batch_size == 2048 and config.data.seq_len == 4096  # Chameleon's global batch


@pytest.mark.skipif(os.environ.get("UNIMODAL_POD_GUARD") != "1", reason="one TPU compile for 128-256 chips per "
                    "config: set UNIMODAL_POD_GUARD=1 (.ci/run does) to compile the shipped large configs for their "
                    "slices")
@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_config_fits_its_target_slice(name):
  pytest.importorskip("libtpu", reason="AOT compiles for TPU need libtpu (pip install -e '.[tpu]')")
  config = planner.planning_config(load_config_file(os.path.join(REPO, "configs", f"{name}.py")))
  slice_name = target_slice(name)
  hbm = topology.parse(slice_name).generation.hbm_bytes
  memory = planner.memory_per_chip(planner.compile_train_step(config, topology.tpu_devices(slice_name)))
  assert memory.peak <= hbm, (f"configs/{name}.py does not fit {slice_name}: {memory.peak / 2**30:.2f} GiB per chip "
                              f"> {hbm / 2**30:.2f} GiB usable; unimodal-plan --config configs/{name}.py "
                              f"--topology {slice_name}")
  print(f"{name} on {slice_name}: {memory.peak / 2**30:.2f} of {hbm / 2**30:.2f} GiB per chip")
