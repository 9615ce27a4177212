"""Mixture-of-Transformers against the dense model at the same dimensions: CPU step time of the real
train step for dense, MoT grouped (ragged matmuls) and MoT masked (every expert on every token).

  python benchmarks/mot.py [--steps 5]

Prints a markdown table with ratios to dense; results with their command live in docs/benchmarks.md.
"""
import argparse

import jax

from step_time import load_config, measure

IMPLS = (("dense", 1, "grouped"), ("MoT grouped", 2, "grouped"), ("MoT masked", 2, "masked"))


def main():
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--config", default="demo")
  parser.add_argument("--steps", type=int, default=5)
  args = parser.parse_args()
  print(f"devices: {jax.device_count()} x {jax.devices()[0].device_kind}; jax {jax.__version__}; "
        f"config {args.config}\n")
  print("| model | step (s) | step / dense |")
  print("|---|---|---|")
  dense_s = None
  for name, num_experts, impl in IMPLS:
    config = load_config(args.config)
    config.model.num_experts, config.model.mot_impl = num_experts, impl
    step_s = measure(config, args.steps)["step_s"]
    dense_s = dense_s or step_s
    print(f"| {name} | {step_s:.3f} | {step_s / dense_s:.2f} |", flush=True)


if __name__ == "__main__":
  main()
