"""Step time of our dense train step against MaxText's, same model, batch and 8-device CPU mesh, one process.

For each size both train steps are built in-process (ours: train/step.py; MaxText: its own
`maxtext.trainers.pre_train.train.train_step`, jitted by its `train_utils.jit_train_and_eval_step` from a
pyconfig, as its trainer does), compiled, run once to warm up, then timed alternately step by step on
the same packed batch; each time is a full step until `jax.block_until_ready` on the new state and
metrics. Prints a markdown table of median step times and ours / MaxText, as the ratio of the medians
and of the fastest steps (the least disturbed by other load on a shared machine).

Matched: llama2-style block (pre-norm RMSNorm, RoPE, SwiGLU, no QK-norm, no biases), untied head, vocab,
bf16 compute with float32 params, full remat, scanned layers, XLA dot-product attention with segment
masking, AdamW (b1 0.9, b2 0.95, eps 1e-5, weight decay 0.1, clip 1.0), z-loss 1e-5, no dropout, pure
FSDP over 8 devices, the same tokens/segments/positions per step.

MaxText needs Python >= 3.12; set up a venv outside the repo once (~3 min, ~5 GB), then run:
  ~/.pyenv/versions/3.12.1/bin/python -m venv /tmp/mt312
  /tmp/mt312/bin/pip install "maxtext[tpu]==0.2.4" && /tmp/mt312/bin/pip install -e /work/main
  XLA_FLAGS=--xla_force_host_platform_device_count=8 JAX_PLATFORMS=cpu /tmp/mt312/bin/python \\
      benchmarks/vs_maxtext.py [--steps 8] [--sizes tiny,small,medium]
"""
import argparse
import os
import platform
import sys
import tempfile
import time

import jax
import numpy as np

from unimodal_jax.config import default_config
from unimodal_jax.data.batch import PackedBatch
from unimodal_jax.model.transformer import Transformer
from unimodal_jax.data.vocab import from_config
from unimodal_jax.parallel import mesh as mesh_lib
from unimodal_jax.train import state as state_lib, step as step_lib

# name: (embed, layers, heads, head_dim, mlp, vocab, seq_len, rows); heads == kv heads (MaxText's default)
SIZES = {
    "tiny": (128, 4, 4, 32, 512, 4096, 128, 8),
    "small": (256, 4, 4, 64, 1024, 8192, 256, 8),
    "medium": (512, 4, 8, 64, 2048, 16384, 256, 8),
}
DOCS_PER_ROW = 3
Z_LOSS, ADAM_EPS = 1e-5, 1e-5


def packed_batch(vocab_size: int, seq_len: int, rows: int, rng) -> PackedBatch:
  """Rows of DOCS_PER_ROW documents each (positions restart per document), every position a real token."""
  tokens = rng.integers(3, vocab_size, size=(rows, seq_len)).astype(np.int32)
  bounds = np.sort(rng.choice(np.arange(1, seq_len), size=(rows, DOCS_PER_ROW - 1), replace=True), axis=1)
  idx = np.arange(seq_len)
  segment_ids = (1 + (idx[None, :, None] >= bounds[:, None, :]).sum(-1)).astype(np.int32)
  starts = np.concatenate([np.zeros((rows, 1), np.int64), bounds], axis=1)
  positions = (idx[None] - np.take_along_axis(starts, segment_ids - 1, axis=1)).astype(np.int32)
  targets = np.roll(tokens, -1, axis=1)
  weights = (np.roll(segment_ids, -1, axis=1) == segment_ids).astype(np.float32)  # no target across documents
  return PackedBatch(tokens=tokens, targets=targets, segment_ids=segment_ids, positions=positions,
                     modality=np.zeros_like(tokens), loss_weights=weights)


def our_config(size):
  embed, layers, heads, head_dim, mlp, vocab, seq_len, rows = size
  c = default_config()
  c.model.update(vocab_size=vocab, num_layers=layers, embed_dim=embed, num_heads=heads, num_kv_heads=heads,
                 head_dim=head_dim, mlp_dim=mlp, qk_norm="none", norm_order="pre", tie_embeddings=False,
                 dropout_rate=0.0, z_loss=Z_LOSS, remat_policy="full", attention="xla", dtype="bfloat16")
  c.mesh.update(data=1, fsdp=jax.device_count(), tensor=1)
  c.optim.eps = ADAM_EPS
  c.data.seq_len, c.train.batch_size = seq_len, rows
  return c


def build_ours(size, batch):
  """Our compiled train step, its state and the batch on the mesh; returns (step_fn, state, compile_s)."""
  config = our_config(size)
  vocab, model = from_config(config), Transformer(config.model)
  mesh, rules = mesh_lib.create_mesh(config.mesh), mesh_lib.axis_rules(config)
  tx = state_lib.make_optimizer(config.optim, config.train.num_steps)
  state, shardings = state_lib.create_state(model, tx, mesh, rules, jax.random.key(0), config.data.seq_len)
  step = step_lib.compile_train_step(shardings, mesh, rules, model=model, tx=tx, vocab=vocab, config=config,
                                     schedule=state_lib.make_schedule(config.optim, config.train.num_steps))
  with mesh_lib.mesh_context(mesh, rules):
    batch = mesh_lib.global_batch(batch, mesh)
    t0 = time.perf_counter()
    compiled = step.lower(state, batch).compile()
    compile_s = time.perf_counter() - t0

  def run(state):
    with mesh_lib.mesh_context(mesh, rules):
      return compiled(state, batch)
  return run, state, compile_s


def maxtext_argv(size, workdir):
  import maxtext  # pylint: disable=import-outside-toplevel
  embed, layers, heads, head_dim, mlp, vocab, seq_len, rows = size
  assert rows % jax.device_count() == 0, "MaxText's batch is per device"
  return [None, os.path.join(os.path.dirname(maxtext.__file__), "configs", "base.yml"),
          "run_name=vs_maxtext", f"base_output_directory={workdir}", "hardware=cpu", "dataset_type=synthetic",
          "steps=1000", "enable_checkpointing=false", "skip_jax_distributed_system=true",
          "enable_tensorboard=false", "log_period=1000000",
          f"base_emb_dim={embed}", f"base_num_decoder_layers={layers}", f"base_num_query_heads={heads}",
          f"base_num_kv_heads={heads}", f"head_dim={head_dim}", f"base_mlp_dim={mlp}", f"vocab_size={vocab}",
          f"max_target_length={seq_len}", f"per_device_batch_size={rows // jax.device_count()}",
          "decoder_block=llama2", "dtype=bfloat16", "weight_dtype=float32", "remat_policy=full",
          "scan_layers=true", "attention=dot_product", "dropout_rate=0.0", "logits_via_embedding=false",
          "opt_type=adamw", "adam_b1=0.9", "adam_b2=0.95", f"adam_eps={ADAM_EPS}", "adam_weight_decay=0.1",
          "gradient_clipping_threshold=1.0", f"z_loss_multiplier={Z_LOSS}", "ici_fsdp_parallelism=-1",
          "packing=true"]


def build_maxtext(size, batch, workdir):
  """MaxText's compiled train step as its trainer builds it; returns (step_fn, state, compile_s)."""
  # pylint: disable=import-outside-toplevel
  from flax import nnx
  from flax.linen import partitioning as nn_partitioning
  from maxtext.trainers.pre_train import train as mt_train
  from maxtext.utils import sharding, train_utils

  config, recorder = mt_train.initialize(maxtext_argv(size, workdir))
  (_, _, state_shardings, model, mesh, _, _, _, _, _, state) = train_utils.setup_train_loop(config, recorder)
  jit_model = model
  if config.pure_nnx:
    jit_model, state = nnx.split(state)
  params_shardings, state_shardings = sharding.maybe_update_params_sharding_with_opt(config, state_shardings)
  p_train_step, _ = train_utils.jit_train_and_eval_step(config, jit_model, mesh, state, state_shardings,
                                                        mt_train.train_step, None, None, params_shardings)
  data_sharding = sharding.get_input_data_sharding(config, mesh)
  fields = {"inputs": batch.tokens, "inputs_position": batch.positions, "inputs_segmentation": batch.segment_ids,
            "targets": batch.targets, "targets_position": batch.positions,
            # MaxText weights targets by targets_segmentation != 0: zero the cross-document targets
            "targets_segmentation": np.where(batch.loss_weights > 0, batch.segment_ids, 0)}
  mt_batch = {k: jax.device_put(np.asarray(v), data_sharding) for k, v in fields.items()}
  extra = () if config.pure_nnx else (jax.random.key(0),)
  with jax.set_mesh(mesh), nn_partitioning.axis_rules(config.logical_axis_rules):
    t0 = time.perf_counter()
    compiled = p_train_step.lower(state, mt_batch, *extra).compile()
    compile_s = time.perf_counter() - t0

  def run(state):
    with jax.set_mesh(mesh), nn_partitioning.axis_rules(config.logical_axis_rules):
      return compiled(state, mt_batch, *extra)
  return run, state, compile_s


def time_alternating(runners, steps: int):
  """Warm up each runner once, then time them in turn, `steps` rounds; returns each runner's step times (s)."""
  states, times = [], [[] for _ in runners]
  for run, state in runners:
    state, metrics = run(state)
    jax.block_until_ready((state, metrics))
    states.append(state)
  for _ in range(steps):
    for i, (run, _) in enumerate(runners):
      t0 = time.perf_counter()
      states[i], metrics = run(states[i])
      jax.block_until_ready((states[i], metrics))
      times[i].append(time.perf_counter() - t0)
  return [np.array(t) for t in times]


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--steps", type=int, default=8, help="timed steps per framework and size")
  parser.add_argument("--sizes", default=",".join(SIZES), help=f"comma-separated, from {list(SIZES)}")
  args = parser.parse_args()
  if jax.device_count() != 8:
    sys.exit(f"expected 8 devices, got {jax.device_count()}: set XLA_FLAGS=--xla_force_host_platform_device_count=8")
  import maxtext  # pylint: disable=import-outside-toplevel
  print(f"devices: {jax.device_count()} x {jax.devices()[0].device_kind}; host: {platform.machine()}, "
        f"{os.cpu_count()} cores; python {platform.python_version()}; jax {jax.__version__}; "
        f"maxtext {getattr(maxtext, '__version__', '0.2.4')}\n", flush=True)
  print("| size | embed x layers, heads, mlp | vocab | rows x seq | compile ours / MaxText (s) | step ours (s) | "
        "step MaxText (s) | ours / MaxText, median | fastest |")
  print("|---|---|---|---|---|---|---|---|---|")
  with tempfile.TemporaryDirectory() as workdir:
    for name in args.sizes.split(","):
      size = SIZES[name]
      embed, layers, heads, head_dim, mlp, vocab, seq_len, rows = size
      batch = packed_batch(vocab, seq_len, rows, np.random.default_rng(0))
      ours, ours_state, ours_compile = build_ours(size, batch)
      theirs, theirs_state, theirs_compile = build_maxtext(size, batch, workdir)
      t_ours, t_theirs = time_alternating([(ours, ours_state), (theirs, theirs_state)], args.steps)
      del ours_state, theirs_state
      print(f"| {name} | {embed} x {layers}, {heads}x{head_dim}, {mlp} | {vocab} | {rows} x {seq_len} | "
            f"{ours_compile:.1f} / {theirs_compile:.1f} | {np.median(t_ours):.3f} | {np.median(t_theirs):.3f} | "
            f"{np.median(t_ours) / np.median(t_theirs):.2f} | {t_ours.min() / t_theirs.min():.2f} |",
            flush=True)


if __name__ == "__main__":
  main()
