"""Ahead-of-time plans: topology names, and the real train step compiled for TPU on this CPU host (libtpu,
no TPU): per-chip argument bytes against the parameter count, scan-corrected FLOPs against model/flops.py,
splash attention inside the step, and the CLI's verdicts.
"""
import os
import subprocess
import sys

import pytest

from unimodal_jax.config import load_config_file
from unimodal_jax.model import flops as flops_lib
from unimodal_jax.plan import aot, planner as plan, topology

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHIPS = 8  # v5e-8: one host, 2x4 chips
FSDP = 2


@pytest.fixture(scope="module")
def devices():
  pytest.importorskip("libtpu")
  return topology.tpu_devices("v5e-8")


def tpu_shaped_tiny(num_layers: int = 4):
  """configs/tiny.py widened so every parameter shard fills whole TPU tiles (128 lanes) at fsdp=2."""
  config = load_config_file(os.path.join(REPO, "configs", "tiny.py"))
  config.model.update(num_layers=num_layers, embed_dim=256, num_heads=4, num_kv_heads=2, head_dim=128, mlp_dim=512)
  config.data.seq_len = 128
  config.mesh.data, config.mesh.fsdp = 4, FSDP
  config.model.attention = "xla"  # "auto" would pick splash on TPU; the FLOPs test counts XLA's score squares
  return config


@pytest.fixture(scope="module")
def compiled(devices):
  return plan.compile_train_step(tpu_shaped_tiny(), devices)


def param_count(m) -> int:
  """Untied embedding and head, per layer q/k/v/o + SwiGLU + two RMSNorms + LayerNorm QK-norms, final norm."""
  attn = m.embed_dim * (2 * m.num_heads + 2 * m.num_kv_heads) * m.head_dim
  layer = attn + 3 * m.embed_dim * m.mlp_dim + 2 * m.embed_dim + 2 * (m.num_heads + m.num_kv_heads) * m.head_dim
  return 2 * m.vocab_size * m.embed_dim + m.num_layers * layer + m.embed_dim


@pytest.mark.parametrize("name, shape, chips", [
    ("v5p-256", (4, 4, 8), 128), ("v5p-128", (4, 4, 4), 64), ("v4-8", (2, 2, 1), 4), ("v5e-8", (2, 4), 8),
    ("v6e-256", (16, 16), 256), ("v5p:4x4x12", (4, 4, 12), 192)])
def test_topology_names_resolve_to_slice_shapes(name, shape, chips):
  t = topology.parse(name)
  assert (t.shape, t.chips) == (shape, chips)


@pytest.mark.parametrize("name", ["v7-8", "v5p-6", "v5e:2x2x2", "v5p-256x"])
def test_unknown_topologies_are_rejected(name):
  with pytest.raises(ValueError, match="v5p|v5e|standard slice|axes|count"):
    topology.parse(name)


def test_mesh_sweep_lists_the_factorisations_the_config_allows():
  shapes = plan.mesh_shapes(load_config_file(os.path.join(REPO, "configs", "tiny.py")), CHIPS)
  assert all(d * f * t == CHIPS for d, f, t in shapes)
  assert {(8, 1, 1), (1, 8, 1), (2, 2, 2), (4, 1, 2)} <= set(shapes)
  assert not [s for s in shapes if s[2] > 2]  # tiny has 2 kv heads: mesh.tensor must divide them


def test_topology_devices_cover_every_chip_of_every_slice(devices):
  assert len(devices) == CHIPS and devices[0].device_kind == "TPU v5 lite"
  pod = topology.tpu_devices("v5p-256", num_slices=2)
  assert len(pod) == 256 and {d.slice_index for d in pod} == {0, 1}


def test_argument_bytes_per_chip_are_params_and_adam_state_over_fsdp(compiled):
  config = tpu_shaped_tiny()
  state = 3 * 4 * param_count(config.model) / FSDP  # float32 params, Adam mu and nu, split over fsdp
  batch = 6 * 4 * config.train.batch_size * config.data.seq_len / CHIPS  # six int32/float32 fields over data*fsdp
  assert plan.memory_per_chip(compiled).arguments == pytest.approx(state + batch, rel=0.05)


def test_flops_per_step_count_every_scanned_layer(devices, compiled):
  """XLA counts a scan body once; the plan's count matches 3x the forward (full score squares, as XLA
  computes them) of all 4 layers, where the step's own cost analysis reports under a third of it."""
  config = tpu_shaped_tiny()
  m, seq_len, tokens = config.model, config.data.seq_len, config.train.batch_size * config.data.seq_len
  forward = flops_lib.forward_flops_per_token(m, seq_len) + m.num_layers * flops_lib.attention_flops(m, seq_len)
  expected_per_chip = 3 * forward * tokens / CHIPS
  assert plan.flops_per_chip(config, devices) == pytest.approx(expected_per_chip, rel=0.05)
  assert compiled.cost_analysis()["flops"] < expected_per_chip / 3


def test_flops_per_step_count_every_chunk_of_the_chunked_loss(devices):
  """The chunked loss is two loops XLA counts for one chunk each; the plan counts all 4 chunks: the unchunked
  step's FLOPs plus the backward pass's recompute of the logits (one more head matmul), at any chunk size."""
  config = tpu_shaped_tiny(num_layers=2)
  tokens, m = config.train.batch_size * config.data.seq_len, config.model
  head_forward = 2 * tokens * m.embed_dim * m.vocab_size / CHIPS
  unchunked = plan.flops_per_chip(config, devices)
  for chunk in (32, 64):
    config.model.loss_chunk_size = chunk
    assert plan.flops_per_chip(config, devices) - unchunked == pytest.approx(head_forward, rel=0.05), chunk


def test_another_loss_chunk_size_for_counting_is_the_nearest_divisor():
  assert plan.other_loss_chunk_size(4096, 512) == 256
  assert plan.other_loss_chunk_size(96, 32) == 24
  with pytest.raises(ValueError, match="model.loss_chunk_size"):
    plan.other_loss_chunk_size(7, 1)


def test_splash_attention_compiles_inside_the_train_step(devices):
  config = tpu_shaped_tiny(num_layers=2)
  config.model.attention, config.model.remat_policy = "splash", "full"
  config.mesh.data, config.mesh.fsdp, config.mesh.tensor = 2, 2, 2
  compiled = plan.compile_train_step(config, devices)
  assert "tpu_custom_call" in compiled.as_text()  # the Pallas kernel, not an XLA fallback


def test_auto_attention_compiles_splash_for_tpu(devices):
  config = tpu_shaped_tiny(num_layers=2)
  config.model.attention = "auto"
  assert plan.attention_for(config, devices) == "splash"
  assert "tpu_custom_call" in aot.lower_train_step(config, devices).as_text()  # lowered for TPU: the kernel
  config.data.seq_len = 96  # not a multiple of the 128-lane splash tile
  assert plan.attention_for(config, devices) == "xla"


def run_cli(*flags):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, "-m", "unimodal_jax.cli.plan",
                         f"--config={os.path.join(REPO, 'configs', 'tiny.py')}", "--topology=v5e-8", *flags],
                        cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def test_cli_oversized_plan_fails_with_a_clear_message(devices):
  # an 8M-id vocabulary: embedding and head with Adam state are ~24 GiB per chip over fsdp=8, on 15.75 GiB
  out = run_cli("--config.model.vocab_size=8388608", "--config.model.embed_dim=1024", "--config.mesh.data=1",
                "--config.mesh.fsdp=8")
  assert out.returncode == 1, out.stderr[-2000:]
  assert "DOES NOT FIT on v5e-8" in out.stdout and "15.75 GiB" in out.stdout


def test_cli_config_error_names_the_key(devices):
  out = run_cli("--config.mesh.tensor=3")
  assert out.returncode == 2
  assert "config.mesh" in out.stderr


def test_memory_from_depths_is_affine_in_the_depth():
  at = lambda n: plan.Memory(arguments=100 + 10 * n, outputs=50 + 5 * n, aliased=40 + 4 * n, temporaries=1000 + 300 * n,
                             generated_code=7)
  assert plan.memory_from_depths({3: at(3), 2: at(2)}, 48) == at(48)
  with pytest.raises(ValueError, match="two depths"):
    plan.memory_from_depths({2: at(2)}, 48)
  with pytest.raises(ValueError, match="peak falls"):
    plan.memory_from_depths({2: at(3), 3: at(2)}, 48)


def test_cli_quick_plan_extrapolates_from_reduced_depths(devices):
  out = run_cli("--quick", "--noflops", "--config.model.num_layers=6")
  assert out.returncode == 0, out.stderr[-2000:]
  assert "extrapolated from 2 and 3 layers" in out.stdout and "FITS on v5e-8" in out.stdout
