"""PNG plots of a sweep: loss vs FLOPs with the fitted compute-optimal frontier, isoFLOP (or iso-ratio) curves with
their minima, and predicted vs measured loss with the held-out size marked; one panel per loss (overall, text, image).
"""
import io
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (backend chosen first)
import numpy as np  # noqa: E402
from etils import epath  # noqa: E402

from unimodal_jax.scaling import analysis, fit as fit_lib  # noqa: E402

PLOTS_DIR = "plots"


def _law(report):
  return fit_lib.LawFit(**report["law"]) if "law" in report else None


def _panels(report, variant):
  losses = report["variants"].get(variant, {})
  return [(name, losses[name]) for name in analysis.LOSSES if name in losses]


def loss_vs_flops(points, report, variant, path):
  panels = _panels(report, variant)
  fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4), squeeze=False)
  for ax, (name, r) in zip(axes[0], panels):
    pts = analysis.usable(points, variant, analysis.LOSSES[name])
    flops = np.array([p["flops"] for p in pts])
    sc = ax.scatter(flops, [p[analysis.LOSSES[name]] for p in pts], c=np.log10([p["N"] for p in pts]),
                    cmap="viridis")
    law = _law(r)
    if law is not None:  # FLOPs per (param x token) of these models, so the frontier is in the points' units
      k = float(np.median(flops / (np.array([p["N"] for p in pts]) * np.array([p["tokens"] for p in pts]))))
      grid = np.geomspace(flops.min() / 2, flops.max() * 4, 100)
      n_opt, d_opt = law.compute_optimal(grid, k)
      ax.plot(grid, law.predict(n_opt, d_opt), "k--", label=f"fit frontier (N* ~ C^{law.exponents[0]:.2f})")
      ax.legend(fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("training FLOPs")
    ax.set_ylabel(f"held-out loss ({name})")
    ax.set_title(f"{variant}: {name}")
    fig.colorbar(sc, ax=ax, label="log10 N")
  _save(fig, path)


def loss_vs_size(points, report, variant, path, budget_kind):
  """IsoFLOP curves (budget_kind 'flops', with parabolas and minima) or one curve per tokens-per-param ratio."""
  panels = _panels(report, variant)
  fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4), squeeze=False)
  for ax, (name, r) in zip(axes[0], panels):
    pts = analysis.usable(points, variant, analysis.LOSSES[name])
    for budget in sorted({p["budget"] for p in pts}):
      sel = sorted((p for p in pts if p["budget"] == budget), key=lambda p: p["N"])
      label = f"C={budget:.2e}" if budget_kind == "flops" else f"D/N={budget:g}"
      ax.plot([p["N"] for p in sel], [p[analysis.LOSSES[name]] for p in sel], "o-", label=label)
    for m in r.get("isoflop_minima", []):
      ax.plot(m["N*"], m["loss"], "k*", markersize=12)
    ax.set_xscale("log")
    ax.set_xlabel("parameters N")
    ax.set_ylabel(f"held-out loss ({name})")
    ax.set_title(f"{variant}: {name} ({'isoFLOP' if budget_kind == 'flops' else 'per budget'})")
    ax.legend(fontsize=7)
  _save(fig, path)


def predicted_vs_measured(points, report, variant, path):
  """The law fitted without the largest size, on every point; the held-out size's points are marked."""
  panels = [(n, r) for n, r in _panels(report, variant) if "law" in r.get("held_out", {})]
  if not panels:
    return False
  fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 4), squeeze=False)
  for ax, (name, r) in zip(axes[0], panels):
    held = r["held_out"]
    law = fit_lib.LawFit(**held["law"])
    pts = analysis.usable(points, variant, analysis.LOSSES[name])
    measured = np.array([p[analysis.LOSSES[name]] for p in pts])
    predicted = law.predict([p["N"] for p in pts], [p["tokens"] for p in pts])
    out = np.array([p["N"] == held["N"] for p in pts])
    ax.scatter(measured[~out], predicted[~out], label="fitted on")
    ax.scatter(measured[out], predicted[out], marker="*", s=120, c="red", label=f"held out (N={held['N']:,})")
    lo, hi = min(measured.min(), predicted.min()), max(measured.max(), predicted.max())
    ax.plot([lo, hi], [lo, hi], "k:", linewidth=1)
    ax.set_xlabel("measured loss")
    ax.set_ylabel("predicted loss")
    ax.set_title(f"{variant}: {name}, error {held['mean_abs_rel_error']:.1%}")
    ax.legend(fontsize=8)
  _save(fig, path)
  return True


def _save(fig, path):
  """PNG bytes written through epath (local or gs://)."""
  fig.tight_layout()
  png = io.BytesIO()
  fig.savefig(png, format="png", dpi=100)
  plt.close(fig)
  epath.Path(path).write_bytes(png.getvalue())


def plot_all(results: dict, report: dict, out_dir: str) -> list[str]:
  epath.Path(out_dir).mkdir(parents=True, exist_ok=True)
  points, kind = results["points"], results["meta"]["budget_kind"]
  written = []
  for variant in report["variants"]:
    if not _panels(report, variant):
      continue
    for stem, draw in (("loss_vs_flops", loss_vs_flops),
                       ("isoflop" if kind == "flops" else "loss_vs_size",
                        lambda p, r, v, path: loss_vs_size(p, r, v, path, kind)),
                       ("predicted_vs_measured", predicted_vs_measured)):
      path = os.path.join(out_dir, f"{stem}_{variant}.png")
      if draw(points, report, variant, path) is not False:
        written.append(path)
  return written
