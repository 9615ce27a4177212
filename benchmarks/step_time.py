"""Step time, tokens/s and compile time of the real train step, on whatever devices JAX sees.

  python benchmarks/step_time.py            # tiny and demo configs; scan compile at 4 and 32 layers

Prints a markdown table; results with their command live in docs/benchmarks.md.
"""
import argparse
import os
import platform
import time

import jax
import numpy as np

from unimodal_jax.config import load_config_file
from unimodal_jax.data.batch import PackedBatch
from unimodal_jax.data.vocab import from_config
from unimodal_jax.model.transformer import Transformer
from unimodal_jax.parallel import mesh as mesh_lib
from unimodal_jax.train import state as state_lib, step as step_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_config(name):
  return load_config_file(os.path.join(REPO, "configs", f"{name}.py"))


def full_batch(config, rng) -> PackedBatch:
  """Rows of one document each, no padding: every position is a real token."""
  vocab = from_config(config)
  shape = (config.train.batch_size, config.data.seq_len)
  tokens = rng.integers(3, vocab.size, size=shape).astype(np.int32)
  ones = np.ones(shape, np.int32)
  return PackedBatch(tokens=tokens, targets=np.roll(tokens, -1, axis=1), segment_ids=ones,
                     positions=np.broadcast_to(np.arange(shape[1], dtype=np.int32), shape).copy(),
                     modality=vocab.modality(tokens), loss_weights=ones.astype(np.float32))


def measure(config, steps: int) -> dict:
  """Compile time (lower + compile) and median step time of the train step for `config`."""
  vocab, model = from_config(config), Transformer(config.model)
  mesh, rules = mesh_lib.create_mesh(config.mesh), mesh_lib.axis_rules(config)
  tx = state_lib.make_optimizer(config.optim, config.train.num_steps)
  state, shardings = state_lib.create_state(model, tx, mesh, rules, jax.random.key(0), config.data.seq_len)
  train_step = step_lib.compile_train_step(shardings, mesh, rules, model=model, tx=tx, vocab=vocab, config=config,
                                           schedule=state_lib.make_schedule(config.optim, config.train.num_steps))
  with mesh_lib.mesh_context(mesh, rules):
    batch = mesh_lib.global_batch(full_batch(config, np.random.default_rng(0)), mesh)
    t0 = time.perf_counter()
    compiled = train_step.lower(state, batch).compile()
    compile_s = time.perf_counter() - t0
    state, metrics = compiled(state, batch)  # warm-up
    jax.block_until_ready(metrics)
    times = []
    for _ in range(steps):
      t0 = time.perf_counter()
      state, metrics = compiled(state, batch)
      jax.block_until_ready(metrics)
      times.append(time.perf_counter() - t0)
  step_s = float(np.median(times))
  tokens = config.train.batch_size * config.data.seq_len
  return {"compile_s": compile_s, "step_s": step_s, "tokens_per_s": tokens / step_s, "tokens": tokens}


def main():
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--steps", type=int, default=5)
  args = parser.parse_args()
  print(f"devices: {jax.device_count()} x {jax.devices()[0].device_kind}; host: {platform.processor() or 'cpu'}, "
        f"{os.cpu_count()} cores; jax {jax.__version__}\n")
  print("| config | layers | tokens/step | compile (s) | step (s) | tokens/s |")
  print("|---|---|---|---|---|---|")
  rows = [("tiny", {}), ("demo", {}), ("demo", {"num_layers": 32})]
  compile_at = {}  # demo's compile time by layer count
  for name, model_overrides in rows:
    config = load_config(name)
    config.model.update(model_overrides)
    r = measure(config, args.steps)
    if name == "demo":
      compile_at[config.model.num_layers] = r["compile_s"]
    print(f"| {name} | {config.model.num_layers} | {r['tokens']} | {r['compile_s']:.2f} | {r['step_s']:.3f} | "
          f"{r['tokens_per_s']:.0f} |", flush=True)
  low, high = sorted(compile_at)
  print(f"\ncompile time with scan, demo at {high} layers / at {low}: {compile_at[high] / compile_at[low]:.2f}")


if __name__ == "__main__":
  main()
