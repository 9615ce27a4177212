"""Multi-slice meshes: dcn_* axes put whole slices along a mesh axis (mesh_utils.create_hybrid_device_mesh), and the
real train step compiles for two TPU slices ahead of time (libtpu, no TPU)."""
import numpy as np
import pytest

from test_model import load_config
from unimodal_jax import config as config_lib
from unimodal_jax.parallel import mesh as mesh_lib
from unimodal_jax.plan import planner as plan_lib, topology
from unimodal_jax.train import validate as validate_lib


@pytest.fixture(scope="module")
def two_slices():
  pytest.importorskip("libtpu", reason="the tpu extra is not installed")
  return topology.tpu_devices("v5e-8", num_slices=2)


def test_dcn_data_puts_each_slice_on_its_own_half_of_the_data_axis(two_slices):
  c = load_config("tiny")
  c.mesh.data, c.mesh.fsdp, c.mesh.tensor, c.mesh.dcn_data = 2, 2, 2, 2
  mesh = mesh_lib.create_mesh(c.mesh, devices=two_slices)
  assert dict(mesh.shape) == {"data": 4, "fsdp": 2, "tensor": 2}
  slice_of = np.vectorize(lambda d: d.slice_index)(mesh.devices)
  assert (slice_of[:2] == 0).all() and (slice_of[2:] == 1).all()  # fsdp and tensor stay inside a slice
  assert mesh_lib.mesh_shape(c.mesh, 16) == (4, 2, 2)


def test_mesh_sizes_must_fill_each_slice():
  c = load_config("tiny")
  c.mesh.data, c.mesh.dcn_data = 4, 2
  with pytest.raises(config_lib.ConfigError, match=r"uses 4 devices, but 16 are available per slice \(2 slices\)"):
    validate_lib.validate(c, num_devices=32)


def test_the_train_step_compiles_for_two_slices_and_the_plan_demands_matching_dcn_axes(two_slices):
  c = load_config("tiny")
  c.train.batch_size, c.mesh.dcn_data = 32, 2
  plan = plan_lib.make_plan(c, two_slices, topology.parse("v5e-8").generation.hbm_bytes, with_flops=False)
  assert plan.fits and plan.memory.arguments > 0
  c.mesh.dcn_data = 1
  with pytest.raises(config_lib.ConfigError, match="span 2 slice"):
    plan_lib.compile_train_step(c, two_slices)
