"""Mixture-of-Transformers against the dense model at the same dimensions: dense, MoT grouped (ragged
matmuls) and MoT masked (every expert on every token).

  python benchmarks/mot.py [--config demo] [--steps 5] [--tpu v5e-8]

CPU: step time of the real train step. TPU (needs `pip install libtpu`; no TPU needed): FLOPs of the
real train step compiled ahead of time for a TPU topology, where `ragged_dot` lowers to grouped
matmuls. XLA's cost analysis counts an `nn.scan` body once, so the step is compiled at 1 layer, and
one layer's forward+backward is compiled on its own. Prints markdown; results go in docs/benchmarks.md.
"""
import argparse
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from step_time import full_batch, load_config, measure
from unimodal_jax.model import experts
from unimodal_jax.model.transformer import Block
from unimodal_jax.parallel import mesh as mesh_lib
from unimodal_jax.plan import aot, topology

VARIANTS = (("dense", 1, "grouped"), ("MoT grouped", 2, "grouped"), ("MoT masked", 2, "masked"))


def variant(name: str, num_experts: int, impl: str):
  config = load_config(name)
  config.model.num_experts, config.model.mot_impl = num_experts, impl
  return config


def train_step_flops(config, devices) -> float:
  """FLOPs of the whole train step (1 scanned layer, counted once) compiled for `devices`."""
  config.model.num_layers = 1
  return aot.lower_train_step(config, devices).compile().cost_analysis()["flops"]


def layer_flops(config, devices) -> float:
  """FLOPs of one decoder layer's forward + backward on a full batch, compiled for `devices`."""
  m, (b, s) = config.model, (config.train.batch_size, config.data.seq_len)
  block = Block(m, deterministic=True)
  mesh, rules = mesh_lib.create_mesh(config.mesh, devices=devices), mesh_lib.axis_rules(config)
  batch = full_batch(config, np.random.default_rng(0))
  x = jnp.zeros((b, s, m.embed_dim), jnp.dtype(m.dtype))

  def loss(params, x, batch):
    routing = experts.route(batch.modality, m.num_experts, m.mot_impl) if m.num_experts > 1 else None
    out, _ = block.apply({"params": params}, x, batch.positions, batch.segment_ids, routing, None, None, None)
    return jnp.sum(out.astype(jnp.float32))

  routing = None if m.num_experts == 1 else experts.route(batch.modality, m.num_experts, m.mot_impl)
  params = jax.eval_shape(lambda: nn.unbox(block.init(jax.random.key(0), x, batch.positions, batch.segment_ids,
                                                      routing, None, None, None)["params"]))
  rows = NamedSharding(mesh, P(mesh_lib.BATCH_AXES))
  with mesh_lib.mesh_context(mesh, rules):
    fn = jax.jit(jax.grad(loss, argnums=(0, 1)), in_shardings=(None, rows, rows))
    return fn.lower(params, x, batch).compile().cost_analysis()["flops"]


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--config", default="demo")
  parser.add_argument("--steps", type=int, default=5)
  parser.add_argument("--tpu", default="", help="a TPU topology to compile for, e.g. v5e-8; '' = CPU timing")
  args = parser.parse_args()
  if args.tpu:
    devices = topology.tpu_devices(args.tpu)
    print(f"AOT for {len(devices)} x {devices[0].device_kind} ({args.tpu}); jax {jax.__version__}; "
          f"config {args.config}\n")
    print("| model | train step FLOPs (1 layer) | / dense | one layer fwd+bwd FLOPs | / dense |")
    print("|---|---|---|---|---|")
    base = None
    for name, num_experts, impl in VARIANTS:
      step = train_step_flops(variant(args.config, num_experts, impl), devices)
      layer = layer_flops(variant(args.config, num_experts, impl), devices)
      base = base or (step, layer)
      print(f"| {name} | {step:.3e} | {step / base[0]:.3f} | {layer:.3e} | {layer / base[1]:.3f} |", flush=True)
    return
  print(f"devices: {jax.device_count()} x {jax.devices()[0].device_kind}; jax {jax.__version__}; "
        f"config {args.config}\n")
  print("| model | step (s) | step / dense |")
  print("|---|---|---|")
  dense_s = None
  for name, num_experts, impl in VARIANTS:
    step_s = measure(variant(args.config, num_experts, impl), args.steps)["step_s"]
    dense_s = dense_s or step_s
    print(f"| {name} | {step_s:.3f} | {step_s / dense_s:.2f} |", flush=True)


if __name__ == "__main__":
  main()
