"""Approach-3 fit time on the 245 Chinchilla Fig. 4 runs: the fitter (all 4,500 grid starts scored at once, L-BFGS
with the exact gradient from the best 16) against a plain scipy grid (L-BFGS-B with finite differences from every
start), and the optimum each reaches.

  OPENBLAS_NUM_THREADS=1 python benchmarks/scaling_fit.py [--plain_starts 4500]

--plain_starts N < 4500 runs the plain baseline on an evenly spaced subset of the grid and extrapolates its time.
"""
import argparse
import csv
import os
import sys
import time

import numpy as np
from scipy import optimize

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
from test_scaling_fit import chinchilla_runs  # noqa: E402  (the test's loader: same exclusion, same D)

from unimodal_jax.scaling import fit  # noqa: E402


def plain_grid(n, d, loss, starts):
  """The baseline: scipy L-BFGS-B with finite-difference gradients from each start, objective in plain numpy."""
  log_n, log_d, log_loss = np.log(n), np.log(d), np.log(loss)

  def f(theta):
    e, a, b, alpha, beta = theta
    pred = np.logaddexp(np.logaddexp(a - alpha * log_n, b - beta * log_d), e)
    return fit.huber(pred - log_loss, fit.HUBER_DELTA)[0].sum()

  best = min((optimize.minimize(f, s, method="L-BFGS-B") for s in starts), key=lambda r: r.fun)
  e, a, b, alpha, beta = best.x
  return fit.LawFit(np.exp(e), np.exp(a), np.exp(b), alpha, beta, best.fun, n.size)


def row(name, seconds, law):
  return (f"| {name} | {seconds:.2f} | {law.E:.4f} | {law.A:.2f} | {law.B:.2f} | {law.alpha:.4f} | {law.beta:.4f} | "
          f"{law.objective:.6e} |")


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--plain_starts", type=int, default=4500)
  parser.add_argument("--repeats", type=int, default=3)
  args = parser.parse_args()
  n, d, loss = chinchilla_runs()
  print(f"OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS', 'unset')}, {n.size} runs, "
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
  print("| method | seconds | E | A | B | alpha | beta | Huber objective |")
  print("|---|---|---|---|---|---|---|---|")
  times = []
  for _ in range(args.repeats):
    t = time.perf_counter()
    law = fit.fit_law(n, d, loss)
    times.append(time.perf_counter() - t)
  print(row(f"fit_law (score 4,500, refine 16; median of {args.repeats})", float(np.median(times)), law))
  starts = fit.grid_starts()
  subset = starts[np.linspace(0, len(starts) - 1, min(args.plain_starts, len(starts))).astype(int)]
  t = time.perf_counter()
  plain = plain_grid(n, d, loss, subset)
  seconds = time.perf_counter() - t
  scale = len(starts) / len(subset)
  label = f"plain scipy grid, {len(subset)} starts" + (f" (time x{scale:.1f} extrapolated)" if scale > 1 else "")
  print(row(label, seconds * scale, plain))
  print(f"published (Besiroglu et al. 2024): E=1.82 A=482.01 B=2085.43 alpha=0.3478 beta=0.3658")


if __name__ == "__main__":
  main()
