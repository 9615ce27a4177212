"""Scaling-law fits: Chinchilla Approach 3 (L = E + A/N^alpha + B/D^beta, Huber on log loss, L-BFGS from a grid of
starts, bootstrap intervals), Approach 2 (isoFLOP parabola minima) and the compute-optimal allocation N*(C), D*(C).

Pure numpy/scipy on arrays of runs; reading runs and plotting live in collect.py and plots.py.
"""
import dataclasses
import itertools

import numpy as np
from scipy import optimize

HUBER_DELTA = 1e-3
# Besiroglu et al. 2024's grid of starts in log space (e = log E, a = log A, b = log B): 5*6*6*5*5 = 4,500 starts.
START_GRID = {"e": np.arange(-1.0, 1.5, 0.5), "a": np.arange(0.0, 30.0, 5.0), "b": np.arange(0.0, 30.0, 5.0),
              "alpha": np.arange(0.0, 2.5, 0.5), "beta": np.arange(0.0, 2.5, 0.5)}
LBFGS_OPTIONS = {"maxiter": 2000, "ftol": 1e-15, "gtol": 1e-12}


@dataclasses.dataclass(frozen=True)
class LawFit:
  """L(N, D) = E + A / N^alpha + B / D^beta, and the Huber objective it reached over `num_points` runs."""
  E: float
  A: float
  B: float
  alpha: float
  beta: float
  objective: float = float("nan")
  num_points: int = 0

  def predict(self, n, d):
    return self.E + self.A / np.asarray(n, float) ** self.alpha + self.B / np.asarray(d, float) ** self.beta

  def compute_optimal(self, flops, flops_per_param_token: float = 6.0):
    """(N*, D*) minimising L under flops = k N D (Hoffmann et al. eq. 4): N* = G (C/k)^(beta/(alpha+beta))."""
    g = (self.alpha * self.A / (self.beta * self.B)) ** (1.0 / (self.alpha + self.beta))
    tokens_params = np.asarray(flops, float) / flops_per_param_token
    n = g * tokens_params ** (self.beta / (self.alpha + self.beta))
    return n, tokens_params / n

  @property
  def exponents(self) -> tuple[float, float]:
    """(a, b) with N* ~ C^a and D* ~ C^b."""
    return self.beta / (self.alpha + self.beta), self.alpha / (self.alpha + self.beta)

  def params(self) -> dict:
    return {k: getattr(self, k) for k in ("E", "A", "B", "alpha", "beta")}


def huber(r, delta: float):
  """Huber loss per element and its derivative."""
  abs_r = np.abs(r)
  quadratic = abs_r <= delta
  value = np.where(quadratic, 0.5 * r * r, delta * (abs_r - 0.5 * delta))
  return value, np.clip(r, -delta, delta)


def objective(theta, log_n, log_d, log_loss, delta: float = HUBER_DELTA):
  """Sum of Huber(LSE(a - alpha log N, b - beta log D, e) - log L) over runs, for K parameter rows at once.

  theta: (K, 5) rows of (e, a, b, alpha, beta). Returns (values (K,), gradients (K, 5)).
  """
  theta = np.atleast_2d(theta)
  e, a, b, alpha, beta = (theta[:, i:i + 1] for i in range(5))
  z = np.stack([a - alpha * log_n, b - beta * log_d, np.broadcast_to(e, (theta.shape[0], log_n.size))])
  top = z.max(axis=0)
  weights = np.exp(z - top)
  total = weights.sum(axis=0)
  weights /= total  # softmax: d LSE / d z
  value, dr = huber(top + np.log(total) - log_loss, delta)
  grads = np.stack([(dr * weights[2]).sum(1), (dr * weights[0]).sum(1), (dr * weights[1]).sum(1),
                    -(dr * weights[0] * log_n).sum(1), -(dr * weights[1] * log_d).sum(1)], axis=1)
  return value.sum(1), grads


def grid_starts(grid: dict = START_GRID) -> np.ndarray:
  return np.array(list(itertools.product(grid["e"], grid["a"], grid["b"], grid["alpha"], grid["beta"])))


def lbfgs(theta0, log_n, log_d, log_loss, delta: float):
  def f(theta):
    value, grad = objective(theta, log_n, log_d, log_loss, delta)
    return value[0], grad[0]
  return optimize.minimize(f, theta0, jac=True, method="L-BFGS-B", options=LBFGS_OPTIONS)


def check_runs(n, d, loss):
  n, d, loss = (np.asarray(x, float).ravel() for x in (n, d, loss))
  if not n.size == d.size == loss.size:
    raise ValueError(f"N, D and loss must have one value per run; got {n.size}, {d.size}, {loss.size}")
  for name, x in (("N", n), ("D", d), ("loss", loss)):
    bad = np.flatnonzero(~(np.isfinite(x) & (x > 0)))
    if bad.size:
      raise ValueError(f"{name} must be finite and > 0; run {bad[0]} has {x[bad[0]]}")
  if n.size < 5:
    raise ValueError(f"Approach 3 fits 5 parameters; it needs at least 5 runs, got {n.size}")
  return n, d, loss


def fit_law(n, d, loss, *, delta: float = HUBER_DELTA, starts: np.ndarray | None = None,
            num_refine: int = 16) -> LawFit:
  """Approach 3. Every start of the grid is scored at once (vectorised); L-BFGS with the exact gradient runs from
  the `num_refine` best-scoring ones (0 = all of them: the plain grid search). The best optimum wins."""
  n, d, loss = check_runs(n, d, loss)
  log_n, log_d, log_loss = np.log(n), np.log(d), np.log(loss)
  starts = grid_starts() if starts is None else np.atleast_2d(starts)
  if 0 < num_refine < len(starts):
    scores = np.concatenate([objective(chunk, log_n, log_d, log_loss, delta)[0]
                             for chunk in np.array_split(starts, max(1, len(starts) // 512))])
    starts = starts[np.argsort(scores, kind="stable")[:num_refine]]
  best = min((lbfgs(s, log_n, log_d, log_loss, delta) for s in starts), key=lambda r: r.fun)
  e, a, b, alpha, beta = best.x
  return LawFit(float(np.exp(e)), float(np.exp(a)), float(np.exp(b)), float(alpha), float(beta),
                float(best.fun), int(n.size))


def to_theta(fit: LawFit) -> np.ndarray:
  return np.array([np.log(fit.E), np.log(fit.A), np.log(fit.B), fit.alpha, fit.beta])


def bootstrap(n, d, loss, fit: LawFit, *, num_samples: int = 200, seed: int = 0, delta: float = HUBER_DELTA,
              level: float = 0.9) -> dict:
  """Percentile intervals of E, A, B, alpha, beta and the exponents a, b over fits to runs resampled with
  replacement; each refit starts from the full-data optimum. Returns {name: (low, high)}."""
  n, d, loss = check_runs(n, d, loss)
  rng = np.random.default_rng(seed)
  samples = []
  for _ in range(num_samples):
    idx = rng.integers(0, n.size, n.size)
    f = fit_law(n[idx], d[idx], loss[idx], delta=delta, starts=to_theta(fit)[None], num_refine=0)
    samples.append([*f.params().values(), *f.exponents])
  samples = np.array(samples)
  tail = 100 * (1 - level) / 2
  low, high = np.percentile(samples, [tail, 100 - tail], axis=0)
  names = ("E", "A", "B", "alpha", "beta", "a", "b")
  return {k: (float(lo), float(hi)) for k, lo, hi in zip(names, low, high)}


@dataclasses.dataclass(frozen=True)
class IsoFlopMinimum:
  flops: float
  n_opt: float
  loss_opt: float
  coeffs: tuple  # loss = c2 x^2 + c1 x + c0 with x = log N


def isoflop_minima(n, loss, flops) -> list[IsoFlopMinimum]:
  """Approach 2: per FLOP budget, a parabola in log N through its runs' losses; its vertex is N*(C).
  Budgets with fewer than 3 sizes, or whose parabola opens downward, have no minimum and are left out."""
  n, loss, flops = (np.asarray(x, float).ravel() for x in (n, loss, flops))
  out = []
  for c in np.unique(flops):
    sel = flops == c
    if np.unique(n[sel]).size < 3:
      continue
    x = np.log(n[sel])
    c2, c1, c0 = np.polyfit(x, loss[sel], 2)
    if c2 <= 0:
      continue
    x_opt = -c1 / (2 * c2)
    out.append(IsoFlopMinimum(float(c), float(np.exp(x_opt)), float(c0 - c1 * c1 / (4 * c2)), (c2, c1, c0)))
  return out


def power_law(x, y) -> tuple[float, float]:
  """(coefficient k, exponent p) of y = k x^p by least squares in log-log space."""
  x, y = np.asarray(x, float), np.asarray(y, float)
  if x.size < 2:
    raise ValueError(f"a power law needs at least 2 points, got {x.size}")
  p, log_k = np.polyfit(np.log(x), np.log(y), 1)
  return float(np.exp(log_k)), float(p)


def approach2(minima: list[IsoFlopMinimum], flops_per_param_token: float = 6.0) -> dict:
  """N*(C) = k_n C^a and D*(C) = k_d C^b through the isoFLOP minima (D* = C / (k N*))."""
  flops = np.array([m.flops for m in minima])
  n_opt = np.array([m.n_opt for m in minima])
  k_n, a = power_law(flops, n_opt)
  k_d, b = power_law(flops, flops / (flops_per_param_token * n_opt))
  return {"k_n": k_n, "a": a, "k_d": k_d, "b": b, "num_budgets": len(minima)}
