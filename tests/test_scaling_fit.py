"""The scaling-law fitter against Besiroglu et al. 2024's published Chinchilla fit and known synthetic laws."""
import csv
import os

import numpy as np
import pytest

from unimodal_jax.scaling import fit, mixed_modal

DATA = os.path.join(os.path.dirname(__file__), "data", "chinchilla_fig4_extracted.csv")
# Besiroglu et al. 2024, "Chinchilla Scaling: A replication attempt", their Approach-3 fit to these runs.
BESIROGLU = {"E": 1.82, "A": 482.01, "B": 2085.43, "alpha": 0.3478, "beta": 0.3658}


def chinchilla_runs():
  """(N, D, loss) of the 245 runs less the 5 highest-loss ones; D = C / (6 N)."""
  with open(DATA) as f:
    rows = list(csv.DictReader(f))
  n = np.array([float(r["Model Size"]) for r in rows])
  c = np.array([float(r["Training FLOP"]) for r in rows])
  loss = np.array([float(r["loss"]) for r in rows])
  keep = np.argsort(loss, kind="stable")[:-5]
  return n[keep], c[keep] / (6 * n[keep]), loss[keep]


def test_chinchilla_fig4_fit_recovers_besiroglu_et_al_within_3_percent():
  n, d, loss = chinchilla_runs()
  assert n.size == 240
  law = fit.fit_law(n, d, loss)
  for name, published in BESIROGLU.items():
    assert getattr(law, name) == pytest.approx(published, rel=0.03), name


def synthetic_runs(law, sizes, ratios, noise, seed):
  rng = np.random.default_rng(seed)
  n = np.repeat(sizes, len(ratios))
  d = n * np.tile(ratios, len(sizes))
  return n, d, law.predict(n, d) * np.exp(noise * rng.standard_normal(n.size))


def test_synthetic_chinchilla_law_is_recovered_from_noisy_runs():
  true = fit.LawFit(E=1.7, A=400.0, B=1500.0, alpha=0.34, beta=0.28)
  n, d, loss = synthetic_runs(true, np.geomspace(1e7, 3e9, 9), np.geomspace(2, 200, 7), noise=0.002, seed=0)
  law = fit.fit_law(n, d, loss, num_refine=4)
  assert law.E == pytest.approx(true.E, rel=0.02)
  assert law.alpha == pytest.approx(true.alpha, rel=0.05)
  assert law.beta == pytest.approx(true.beta, rel=0.05)
  assert law.exponents[0] == pytest.approx(true.exponents[0], rel=0.03)
  # the fit predicts held-out points of the true law
  assert law.predict(1e10, 2e11) == pytest.approx(true.predict(1e10, 2e11), rel=0.01)


def test_compute_optimal_allocation_minimises_the_law_on_its_flop_budget():
  law = fit.LawFit(**BESIROGLU)
  flops = 1e23
  n_opt, d_opt = law.compute_optimal(flops)
  assert 6 * n_opt * d_opt == pytest.approx(flops)
  grid = np.geomspace(n_opt / 10, n_opt * 10, 2001)
  brute = grid[np.argmin(law.predict(grid, flops / (6 * grid)))]
  assert n_opt == pytest.approx(brute, rel=0.01)
  a, b = law.exponents
  assert a + b == pytest.approx(1.0)


def test_bootstrap_intervals_cover_the_truth_and_narrow_with_less_noise():
  true = fit.LawFit(E=2.0, A=300.0, B=900.0, alpha=0.3, beta=0.3)
  widths = []
  for noise in (0.01, 0.001):
    n, d, loss = synthetic_runs(true, np.geomspace(1e7, 1e9, 6), np.geomspace(5, 100, 5), noise=noise, seed=1)
    law = fit.fit_law(n, d, loss, num_refine=4)
    ci = fit.bootstrap(n, d, loss, law, num_samples=20, seed=0)
    assert ci["alpha"][0] <= law.alpha <= ci["alpha"][1]
    widths.append(ci["E"][1] - ci["E"][0])
  assert widths[1] < widths[0] / 3


def test_approach2_finds_the_vertex_of_an_isoflop_parabola():
  n = np.geomspace(1e6, 1e9, 9)
  n0 = 3.3e7
  loss = 2.5 + 0.07 * (np.log(n) - np.log(n0)) ** 2
  (minimum,) = fit.isoflop_minima(n, loss, np.full(n.size, 1e19))
  assert minimum.n_opt == pytest.approx(n0, rel=1e-6)
  assert minimum.loss_opt == pytest.approx(2.5, rel=1e-9)


def test_approach2_exponent_matches_the_law_that_made_the_isoflop_curves():
  law = fit.LawFit(**BESIROGLU)
  budgets = np.geomspace(1e19, 1e22, 4)
  n, loss, flops = [], [], []
  for c in budgets:
    n_opt, _ = law.compute_optimal(c)
    sizes = n_opt * np.geomspace(0.5, 2, 7)
    n += list(sizes)
    loss += list(law.predict(sizes, c / (6 * sizes)))
    flops += [c] * sizes.size
  minima = fit.isoflop_minima(n, loss, flops)
  assert len(minima) == 4
  result = fit.approach2(minima)
  assert result["a"] == pytest.approx(law.exponents[0], abs=0.01)
  assert result["b"] == pytest.approx(law.exponents[1], abs=0.01)


def test_isoflop_budget_with_two_sizes_or_a_downward_parabola_has_no_minimum():
  assert fit.isoflop_minima([1e6, 1e7], [3.0, 2.9], [1e18, 1e18]) == []
  assert fit.isoflop_minima([1e6, 1e7, 1e8], [3.0, 3.2, 3.0], [1e18] * 3) == []


def test_bad_runs_are_named():
  with pytest.raises(ValueError, match="loss must be finite and > 0; run 2 has nan"):
    fit.fit_law([1e6] * 6, [1e8] * 6, [3.0, 3.0, float("nan"), 3.0, 3.0, 3.0])
  with pytest.raises(ValueError, match="at least 5 runs"):
    fit.fit_law([1e6] * 3, [1e8] * 3, [3.0] * 3)


def test_bimodal_mixed_modal_law_is_recovered_from_synthetic_sweeps():
  """Unimodal laws from text-only and image-only runs, then synergy and competition from mixed runs."""
  text_true = fit.LawFit(E=1.8, A=300.0, B=1200.0, alpha=0.32, beta=0.30)
  image_true = fit.LawFit(E=3.0, A=150.0, B=2500.0, alpha=0.28, beta=0.33)
  sizes, ratios = np.geomspace(1e7, 3e9, 8), np.geomspace(2, 200, 6)
  text = fit.fit_law(*synthetic_runs(text_true, sizes, ratios, noise=5e-4, seed=2), num_refine=4)
  image = fit.fit_law(*synthetic_runs(image_true, sizes, ratios, noise=5e-4, seed=3), num_refine=4)
  true = mixed_modal.BimodalFit(C=0.15, A=40.0, B=300.0, alpha=0.25, beta=0.3, text=text_true, image=image_true)
  rng = np.random.default_rng(4)
  n = np.repeat(sizes, ratios.size)
  d_total = n * np.tile(ratios, sizes.size)
  text_share = rng.uniform(0.3, 0.7, n.size)
  d_text, d_image = d_total * text_share, d_total * (1 - text_share)
  loss = true.predict(n, d_text, d_image) * np.exp(5e-4 * rng.standard_normal(n.size))
  got = mixed_modal.fit_bimodal(n, d_text, d_image, loss, text, image, num_refine=4)
  for name, value in true.params().items():
    assert getattr(got, name) == pytest.approx(value, rel=0.1), name
  barrier = got.barrier(tokens_per_param=20)
  true_barrier = true.barrier(tokens_per_param=20)
  assert barrier["n_at_ratio"] == pytest.approx(true_barrier["n_at_ratio"], rel=0.3)
  # past the barrier one mixed model beats the two unimodal ones of its size
  n_b = true_barrier["n_at_ratio"]
  assert true.competition(2 * n_b, 40 * n_b) < true.C < true.competition(n_b / 2, 10 * n_b)


def test_bimodal_law_without_synergy_has_no_barrier():
  law = fit.LawFit(E=2.0, A=1.0, B=1.0, alpha=0.3, beta=0.3)
  no_synergy = mixed_modal.BimodalFit(C=-0.01, A=1.0, B=1.0, alpha=0.3, beta=0.3, text=law, image=law)
  assert no_synergy.barrier(20) == {"n_unlimited_data": None, "d_unlimited_params": None, "n_at_ratio": None}
