"""Step time, tokens/s and compile time of the real train step, on whatever devices JAX sees; and the input
pipeline's overhead: steps fed by the real pipeline through the loop's prefetch vs one constant device batch.

  python benchmarks/step_time.py            # tiny and demo configs; scan compile at 4 and 32 layers; input overhead

Prints markdown tables; results with their command live in docs/benchmarks.md.
"""
import argparse
import functools
import itertools
import os
import platform
import tempfile
import time

import jax
import numpy as np

from unimodal_jax.config import load_config_file
from unimodal_jax.data import pipeline
from unimodal_jax.data.batch import PackedBatch
from unimodal_jax.data.vocab import from_config
from unimodal_jax.model.transformer import Transformer
from unimodal_jax.parallel import mesh as mesh_lib
from unimodal_jax.train import loop, prefetch, state as state_lib, step as step_lib

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


def compiled_step(config):
  """The train step compiled for `config`'s state and a full batch, the fresh state, the mesh and its rules."""
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
  return compiled, time.perf_counter() - t0, state, batch, mesh, rules


def measure(config, steps: int) -> dict:
  """Compile time (lower + compile) and median step time of the train step for `config`."""
  compiled, compile_s, state, batch, mesh, rules = compiled_step(config)
  with mesh_lib.mesh_context(mesh, rules):
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


def stepping_time(compiled, state, batches, steps: int):
  """Seconds per step in the loop's rhythm (train/loop.py): take a batch, dispatch step n, then wait for step n - 1
  (the loop reads its non-finite streak), so the host runs at most one step ahead of the devices."""
  previous = None
  t0 = time.perf_counter()
  for _ in range(steps):
    state, metrics = compiled(state, next(batches)[0])
    if previous is not None:
      jax.device_get(previous["nonfinite_streak"])
    previous = metrics
  jax.block_until_ready(state)
  return state, (time.perf_counter() - t0) / steps


def input_overhead(config, data_dir: str, repeats: int, steps: int) -> dict:
  """Median seconds per step fed (a) one constant device batch, (b) the real pipeline through the loop's prefetch
  (train.prefetch_batches ahead, on a thread), (c) the real pipeline read and placed in the loop's thread; repeats
  interleaved so that load on the machine hits all three alike."""
  config.data.dir = data_dir
  compiled, _, state, batch, mesh, rules = compiled_step(config)
  paths = loop.data_paths(config, data_dir)[0]
  place = functools.partial(mesh_lib.global_batch, mesh=mesh)
  feeds = {"constant": lambda: itertools.repeat((batch, 0)),
           "prefetch": lambda: prefetch.device_batches(pipeline.make_dataset(config, paths), place,
                                                      config.train.prefetch_batches),
           "no prefetch": lambda: prefetch.device_batches(pipeline.make_dataset(config, paths), place, 0)}
  times = {name: [] for name in feeds}
  with mesh_lib.mesh_context(mesh, rules):
    for _ in range(repeats):
      for name, feed in feeds.items():
        batches = feed()
        next(batches)  # the pipeline's start-up (opening shards, first pack) is not a step's
        state, seconds = stepping_time(compiled, state, batches, steps)
        times[name].append(seconds)
        if hasattr(batches, "close"):
          batches.close()
  return {name: float(np.median(t)) for name, t in times.items()}


def main():
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--steps", type=int, default=5)
  parser.add_argument("--repeats", type=int, default=7, help="interleaved runs per input feed")
  parser.add_argument("--input_steps", type=int, default=10, help="steps per run of an input feed")
  parser.add_argument("--data_root", default=os.path.join(tempfile.gettempdir(), "unimodal_step_time"),
                      help="where the embedded datasets of the configs are prepared (kept for later runs)")
  parser.add_argument("--only_input", action="store_true", help="skip the step and compile time table")
  args = parser.parse_args()
  print(f"devices: {jax.device_count()} x {jax.devices()[0].device_kind}; host: {platform.processor() or 'cpu'}, "
        f"{os.cpu_count()} cores; jax {jax.__version__}\n")
  if not args.only_input:
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

  print(f"\ninput pipeline: median s/step over {args.repeats} interleaved runs of {args.input_steps} steps\n")
  print("| config | constant device batch | real data, prefetch | ratio | real data, no prefetch | ratio |")
  print("|---|---|---|---|---|---|")
  for name in ("tiny", "demo"):
    config = load_config(name)
    r = input_overhead(config, os.path.join(args.data_root, name), args.repeats, args.input_steps)
    print(f"| {name} | {r['constant']:.4f} | {r['prefetch']:.4f} | {r['prefetch'] / r['constant']:.3f} | "
          f"{r['no prefetch']:.4f} | {r['no prefetch'] / r['constant']:.3f} |", flush=True)


if __name__ == "__main__":
  main()
