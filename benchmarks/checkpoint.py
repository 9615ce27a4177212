"""Checkpoint cost: save (blocking part and total) and restore time against parameter count, and the step-time
overhead of an asynchronous save, with the run's own checkpoint code (train/checkpoint.py) on 8 fake CPU devices.

  python benchmarks/checkpoint.py [--widths 256,512,1024] [--dir /tmp/ckpt_bench]

Blocking = the time `checkpoint.save` holds the training loop (device-to-host copy); total = until the files are
committed. The step overhead compares the mean time of the 8 steps after a save started with 8 steps without one,
in the same run. Prints a markdown table; results with the command live in docs/benchmarks.md.
"""
import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import argparse  # noqa: E402
import shutil  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402

from step_time import full_batch, load_config  # noqa: E402
from unimodal_jax.data import embedded, pipeline  # noqa: E402
from unimodal_jax.data.vocab import from_config  # noqa: E402
from unimodal_jax.model.transformer import Transformer  # noqa: E402
from unimodal_jax.parallel import mesh as mesh_lib  # noqa: E402
from unimodal_jax.train import checkpoint, state as state_lib, step as step_lib  # noqa: E402

STEPS = 8


def timed_steps(train_step, state, batch, n):
  t0 = time.perf_counter()
  for _ in range(n):
    state, metrics = train_step(state, batch)
  jax.block_until_ready(metrics)
  return state, (time.perf_counter() - t0) / n


def measure(width: int, root: str, data_iter) -> dict:
  c = load_config("tiny")
  c.model.embed_dim, c.model.mlp_dim, c.model.num_layers = width, 4 * width, 4
  c.model.num_heads = c.model.num_kv_heads = width // 64
  c.model.head_dim = 64
  c.mesh.data, c.mesh.fsdp = 1, 8
  c.train.checkpoint_every = 1
  vocab, model = from_config(c), Transformer(c.model)
  mesh, rules = mesh_lib.create_mesh(c.mesh), mesh_lib.axis_rules(c)
  tx = state_lib.make_optimizer(c.optim, 100)
  state, shardings = state_lib.create_state(model, tx, mesh, rules, jax.random.key(0), c.data.seq_len)
  train_step = step_lib.compile_train_step(shardings, mesh, rules, model=model, tx=tx, vocab=vocab, config=c,
                                           schedule=state_lib.make_schedule(c.optim, 100))
  workdir = os.path.join(root, f"w{width}")
  shutil.rmtree(workdir, ignore_errors=True)
  manager = checkpoint.make_manager(workdir, c.train)
  with mesh_lib.mesh_context(mesh, rules):
    batch = mesh_lib.global_batch(full_batch(c, np.random.default_rng(0)), mesh)
    state, _ = timed_steps(train_step, state, batch, 2)  # compile and warm up
    state, plain = timed_steps(train_step, state, batch, STEPS)
    t0 = time.perf_counter()
    blocking = checkpoint.save(manager, 1, state, c, every=1, data_iterator=data_iter, force=True)
    state, during = timed_steps(train_step, state, batch, STEPS)
    manager.wait_until_finished()
    total = time.perf_counter() - t0
  t0 = time.perf_counter()
  restored = checkpoint.restore_latest(manager, state, data_iter)
  jax.block_until_ready(restored)
  restore = time.perf_counter() - t0
  manager.close()
  params = sum(x.size for x in jax.tree.leaves(state.params))
  state_bytes = sum(x.nbytes for x in jax.tree.leaves(state))
  return {"width": width, "params_m": params / 1e6, "state_mb": state_bytes / 2**20, "blocking_s": blocking,
          "total_s": total, "restore_s": restore, "step_s": plain, "step_ratio": during / plain}


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--widths", default="256,512,1024")
  parser.add_argument("--dir", default="/tmp/ckpt_bench")
  args = parser.parse_args()
  c = load_config("tiny")
  data_iter = iter(pipeline.make_dataset(c, embedded.prepare(c, os.path.join(args.dir, "data"))))
  print("| embed dim | params (M) | train state (MiB) | save blocking (s) | save total (s) | restore (s) | "
        "step (s) | step time during async save / without |")
  print("|---|---|---|---|---|---|---|---|")
  for width in map(int, args.widths.split(",")):
    r = measure(width, args.dir, data_iter)
    print(f"| {r['width']} | {r['params_m']:.1f} | {r['state_mb']:.0f} | {r['blocking_s']:.2f} | {r['total_s']:.2f} | "
          f"{r['restore_s']:.2f} | {r['step_s']:.3f} | {r['step_ratio']:.2f} |", flush=True)


if __name__ == "__main__":
  main()
