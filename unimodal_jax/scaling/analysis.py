"""Fits over a collected sweep: per variant (dense, MoT, ...) and per loss (overall, text, image), Approach 3 with
bootstrap intervals, Approach 2 for FLOP budgets, the compute-optimal exponents, the held-out-size prediction, and the
bimodal mixed-modal law when the spec names text-only, image-only and mixed variants."""
import numpy as np

from unimodal_jax.scaling import fit as fit_lib, mixed_modal

LOSSES = {"overall": "eval_loss", "text": "eval_loss_text", "image": "eval_loss_image"}


def usable(points, variant: str, column: str) -> list[dict]:
  return [p for p in points if p["variant"] == variant and p["status"] == "ok" and p.get(column) is not None]


def arrays(points, column: str):
  return (np.array([p["N"] for p in points], float), np.array([p["tokens"] for p in points], float),
          np.array([p[column] for p in points], float))


def law_report(points, column: str, budget_kind: str, bootstrap: int, seed: int) -> dict:
  n, d, loss = arrays(points, column)
  out = {"num_points": len(points)}
  try:
    law = fit_lib.fit_law(n, d, loss)
  except ValueError as e:
    return {**out, "error": str(e)}
  a, b = law.exponents
  out.update({"law": law.params(), "objective": law.objective, "exponents": {"N*": a, "D*": b}})
  if bootstrap:
    out["intervals_90"] = fit_lib.bootstrap(n, d, loss, law, num_samples=bootstrap, seed=seed)
  if budget_kind == "flops":
    minima = fit_lib.isoflop_minima(n, loss, [p["budget"] for p in points])
    out["isoflop_minima"] = [{"flops": m.flops, "N*": m.n_opt, "loss": m.loss_opt} for m in minima]
    if len(minima) >= 2:
      out["approach2"] = fit_lib.approach2(minima)
  out["held_out"] = held_out_prediction(points, column)
  return out


def held_out_prediction(points, column: str) -> dict:
  """Fit on every size but the largest; predict the largest size's points."""
  largest = max(p["N"] for p in points)
  train = [p for p in points if p["N"] < largest]
  test = [p for p in points if p["N"] == largest]
  try:
    law = fit_lib.fit_law(*arrays(train, column))
  except ValueError as e:
    return {"error": f"without the largest size: {e}"}
  n, d, loss = arrays(test, column)
  predicted = law.predict(n, d)
  return {"N": largest, "law": law.params(),
          "points": [{"name": p["name"], "tokens": p["tokens"], "measured": float(m), "predicted": float(q)}
                     for p, m, q in zip(test, loss, predicted)],
          "mean_abs_rel_error": float(np.mean(np.abs(predicted - loss) / loss))}


def mixed_modal_report(points, text_variant: str, image_variant: str, mixed_variant: str,
                       tokens_per_param: float) -> dict:
  """Unimodal laws from the text-only (text loss) and image-only (image loss) runs, then the bimodal law on the mixed
  runs' mean of text and image loss, with each modality's tokens."""
  try:
    text = fit_lib.fit_law(*arrays(usable(points, text_variant, "eval_loss_text"), "eval_loss_text"))
    image = fit_lib.fit_law(*arrays(usable(points, image_variant, "eval_loss_image"), "eval_loss_image"))
    mixed = [p for p in usable(points, mixed_variant, "eval_loss_text") if p.get("eval_loss_image") is not None]
    law = mixed_modal.fit_bimodal(
        [p["N"] for p in mixed], [p["tokens_text"] for p in mixed], [p["tokens_image"] for p in mixed],
        [(p["eval_loss_text"] + p["eval_loss_image"]) / 2 for p in mixed], text, image)
  except ValueError as e:
    return {"error": str(e)}
  return {"text_law": text.params(), "image_law": image.params(), "bimodal": law.params(),
          "synergy_C": law.C, "barrier": law.barrier(tokens_per_param), "barrier_tokens_per_param": tokens_per_param}


def analyse(results: dict, bootstrap: int = 100, seed: int = 0) -> dict:
  points, meta = results["points"], results["meta"]
  out = {"variants": {}, "problems": results["problems"]}
  for variant in sorted({p["variant"] for p in points}):
    out["variants"][variant] = {
        name: law_report(usable(points, variant, column), column, meta["budget_kind"], bootstrap, seed)
        for name, column in LOSSES.items() if usable(points, variant, column)}
  if meta.get("mixed_modal"):
    t, i, m = meta["mixed_modal"]
    out["mixed_modal"] = mixed_modal_report(points, t, i, m, meta.get("barrier_tokens_per_param", 20.0))
  return out


def summary(report: dict) -> str:
  lines = []
  for variant, losses in report["variants"].items():
    for name, r in losses.items():
      head = f"{variant:10s} {name:8s} {r['num_points']:3d} points: "
      if "error" in r:
        lines.append(head + r["error"])
        continue
      law = r["law"]
      lines.append(head + f"L = {law['E']:.3f} + {law['A']:.4g}/N^{law['alpha']:.3f} + {law['B']:.4g}/D^"
                   f"{law['beta']:.3f};  N* ~ C^{r['exponents']['N*']:.3f}, D* ~ C^{r['exponents']['D*']:.3f}")
      if "intervals_90" in r:
        ci = r["intervals_90"]
        lines.append(f"{'':20s} 90% intervals: alpha [{ci['alpha'][0]:.3f}, {ci['alpha'][1]:.3f}], beta "
                     f"[{ci['beta'][0]:.3f}, {ci['beta'][1]:.3f}], a [{ci['a'][0]:.3f}, {ci['a'][1]:.3f}]")
      if "approach2" in r:
        lines.append(f"{'':20s} Approach 2: N* ~ C^{r['approach2']['a']:.3f} over {r['approach2']['num_budgets']} "
                     f"budgets")
      held = r["held_out"]
      lines.append(f"{'':20s} held-out size: " + (held["error"] if "error" in held else
                   f"N={held['N']:,} mean |predicted - measured| / measured = {held['mean_abs_rel_error']:.2%}"))
  if "mixed_modal" in report:
    mm = report["mixed_modal"]
    lines.append("mixed-modal: " + (mm["error"] if "error" in mm else
                 f"synergy C = {mm['synergy_C']:.4f}, competition A={mm['bimodal']['A']:.4g}/N^"
                 f"{mm['bimodal']['alpha']:.3f} + B={mm['bimodal']['B']:.4g}/D^{mm['bimodal']['beta']:.3f}, "
                 f"barrier at {mm['barrier']}"))
  for name, why in report["problems"].items():
    lines.append(f"left out: {name}: {why}")
  return "\n".join(lines)
