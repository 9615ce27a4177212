"""The bimodal scaling law of Aghajanyan et al. 2023 ("Scaling Laws for Generative Mixed-Modal Language Models"):

  L_ti(N, D_t, D_i) = (L_t(N, D_t) + L_i(N, D_i)) / 2 - C + A_ti / N^alpha_ti + B_ti / (D_t + D_i)^beta_ti

L_t, L_i are unimodal Approach-3 laws (fit.LawFit); C is the synergy, the last two terms the competition. Fitted with
the Huber loss on log loss (as fit.py), L-BFGS from a grid of (alpha_ti, beta_ti) whose linear terms are solved first.
"""
import dataclasses

import numpy as np
from scipy import optimize

from unimodal_jax.scaling import fit as fit_lib

EXPONENT_GRID = np.arange(0.1, 1.6, 0.2)


@dataclasses.dataclass(frozen=True)
class BimodalFit:
  C: float
  A: float
  B: float
  alpha: float
  beta: float
  text: fit_lib.LawFit
  image: fit_lib.LawFit
  objective: float = float("nan")
  num_points: int = 0

  def unimodal_mean(self, n, d_text, d_image):
    return (self.text.predict(n, d_text) + self.image.predict(n, d_image)) / 2

  def competition(self, n, d_total):
    return self.A / np.asarray(n, float) ** self.alpha + self.B / np.asarray(d_total, float) ** self.beta

  def predict(self, n, d_text, d_image):
    d_text, d_image = np.asarray(d_text, float), np.asarray(d_image, float)
    return self.unimodal_mean(n, d_text, d_image) - self.C + self.competition(n, d_text + d_image)

  def barrier(self, tokens_per_param: float) -> dict:
    """Where the competition falls to the synergy C, past which one mixed model beats the two unimodal ones of its
    size: N at unlimited data, D at unlimited size, and N along D = tokens_per_param * N. None when C <= 0."""
    if self.C <= 0:
      return {"n_unlimited_data": None, "d_unlimited_params": None, "n_at_ratio": None}
    gap = lambda log_n: self.competition(np.exp(log_n), tokens_per_param * np.exp(log_n)) - self.C
    n_at_ratio = float(np.exp(optimize.brentq(gap, -50.0, 200.0))) if gap(-50.0) > 0 > gap(200.0) else None
    return {"n_unlimited_data": float((self.A / self.C) ** (1 / self.alpha)),
            "d_unlimited_params": float((self.B / self.C) ** (1 / self.beta)), "n_at_ratio": n_at_ratio}

  def params(self) -> dict:
    return {k: getattr(self, k) for k in ("C", "A", "B", "alpha", "beta")}


def objective(theta, log_n, log_s, mean_uni, log_loss, delta: float):
  """Huber(log prediction - log loss) summed over runs and its gradient; theta = (C, log A, log B, alpha, beta).
  A prediction <= 0 has no log: its runs cost as if far off, with the gradient pushing the prediction up."""
  c, la, lb, alpha, beta = theta
  term_n, term_s = np.exp(la - alpha * log_n), np.exp(lb - beta * log_s)
  pred = mean_uni - c + term_n + term_s
  ok = pred > 0
  safe = np.where(ok, pred, 1.0)
  value, dr = fit_lib.huber(np.log(safe) - log_loss, delta)
  value = np.where(ok, value, delta * (1.0 - pred))
  g = np.where(ok, dr / safe, -delta)  # d objective / d prediction
  grad = np.array([-g.sum(), (g * term_n).sum(), (g * term_s).sum(), -(g * term_n * log_n).sum(),
                   -(g * term_s * log_s).sum()])
  return value.sum(), grad


def linear_start(alpha, beta, n, s, gap):
  """(C, log A, log B) by least squares of gap = -C + A N^-alpha + B S^-beta with A, B >= tiny."""
  design = np.stack([-np.ones_like(n), n ** -alpha, s ** -beta], axis=1)
  scale = np.abs(design).max(axis=0)
  sol = optimize.lsq_linear(design / scale, gap, bounds=([-np.inf, 0, 0], [np.inf, np.inf, np.inf])).x / scale
  return np.array([sol[0], np.log(max(sol[1], 1e-12)), np.log(max(sol[2], 1e-12)), alpha, beta])


def fit_bimodal(n, d_text, d_image, loss, text: fit_lib.LawFit, image: fit_lib.LawFit, *,
                delta: float = fit_lib.HUBER_DELTA, num_refine: int = 8) -> BimodalFit:
  """Fit C, A, B, alpha, beta to mixed runs' losses (the mean of their text and image eval losses), given the
  unimodal laws fitted on text-only and image-only runs."""
  n, d_text, loss = fit_lib.check_runs(n, d_text, loss)
  d_image = np.asarray(d_image, float).ravel()
  if d_image.size != n.size or not np.all(np.isfinite(d_image) & (d_image > 0)):
    raise ValueError("d_image must hold one finite value > 0 per run")
  s = d_text + d_image
  mean_uni = (text.predict(n, d_text) + image.predict(n, d_image)) / 2
  log_n, log_s, log_loss = np.log(n), np.log(s), np.log(loss)
  starts = [linear_start(a, b, n, s, loss - mean_uni) for a in EXPONENT_GRID for b in EXPONENT_GRID]
  starts.sort(key=lambda t: objective(t, log_n, log_s, mean_uni, log_loss, delta)[0])
  runs = [optimize.minimize(objective, t, args=(log_n, log_s, mean_uni, log_loss, delta), jac=True,
                            method="L-BFGS-B", options=fit_lib.LBFGS_OPTIONS) for t in starts[:num_refine]]
  best = min(runs, key=lambda r: r.fun)
  c, la, lb, alpha, beta = best.x
  return BimodalFit(float(c), float(np.exp(la)), float(np.exp(lb)), float(alpha), float(beta), text, image,
                    float(best.fun), int(n.size))
