"""One table of a sweep's points from its runs' metrics.jsonl: held-out loss overall and per modality at the last
step, tokens (per modality too), FLOPs and parameter counts; runs that diverged or did not finish are named."""
import csv
import dataclasses
import json
import math
import os

from unimodal_jax.scaling import plan as plan_lib

METRICS_FILE = "metrics.jsonl"  # train/metrics.py's name; read here without importing the training stack
RESULTS_CSV = "results.csv"
RESULTS_JSON = "results.json"
MODALITIES = ("text", "image")


def read_rows(path: str) -> dict[int, dict]:
  """metrics.jsonl by step; a resumed run rewrites the steps after its checkpoint, and the last write wins."""
  rows = {}
  if not os.path.exists(path):
    return rows
  with open(path) as f:
    for i, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        row = json.loads(line)
      except json.JSONDecodeError as e:
        raise ValueError(f"{path} line {i}: not JSON ({e})") from None
      rows.setdefault(int(row["step"]), {}).update(row)
  return rows


def modality_tokens(rows: dict[int, dict], up_to: int) -> dict[str, float]:
  """Loss tokens per modality trained on in steps <= up_to (each logged row sums its interval)."""
  return {m: sum(r.get(f"num_tokens/{m}", 0.0) for s, r in rows.items() if s <= up_to) for m in MODALITIES}


def nonfinite_step(rows: dict[int, dict]) -> int | None:
  for step in sorted(rows):
    if any(k.startswith(("loss", "eval/loss")) and not math.isfinite(v) for k, v in rows[step].items()
           if isinstance(v, float)):
      return step
  return None


def point(run: plan_lib.Run, sweep_dir: str, runs_by_name: dict) -> dict:
  rows = read_rows(os.path.join(run.workdir(sweep_dir), METRICS_FILE))
  record = {"name": run.name, "variant": run.variant, "size": run.size, "budget": run.budget, "N": run.n,
            **{f"params_{k}": v for k, v in dataclasses.asdict(run.params).items()},
            "tokens": run.tokens, "flops": run.point_flops, "num_steps": run.num_steps,
            "branch_of": run.depends_on}
  tokens = modality_tokens(rows, run.num_steps)
  if run.depends_on:  # the stable part was trained by the parent
    parent = read_rows(os.path.join(runs_by_name[run.depends_on].workdir(sweep_dir), METRICS_FILE))
    tokens = {m: tokens[m] + v for m, v in modality_tokens(parent, run.branch_step).items()}
  record.update({f"tokens_{m}": v for m, v in tokens.items()})
  final = rows.get(run.num_steps, {})
  record["eval_loss"] = final.get("eval/loss")
  for m in MODALITIES:
    record[f"eval_loss_{m}"] = final.get(f"eval/loss/{m}")
  bad = nonfinite_step(rows)
  if not rows:
    record["status"], record["problem"] = "missing", f"no {METRICS_FILE} in {run.workdir(sweep_dir)}"
  elif bad is not None:
    record["status"], record["problem"] = "diverged", f"non-finite loss at step {bad}"
  elif record["eval_loss"] is None:
    last = max(rows)
    record["status"], record["problem"] = "unfinished", f"no eval/loss at step {run.num_steps} (last step {last})"
  else:
    record["status"], record["problem"] = "ok", ""
  return record


def collect(runs, sweep_dir: str) -> list[dict]:
  by_name = {r.name: r for r in runs}
  return [point(r, sweep_dir, by_name) for r in runs]


def write(points: list[dict], sweep_dir: str, meta: dict) -> tuple[str, str]:
  """results.csv (one row per point) and results.json ({meta, points, problems})."""
  csv_path, json_path = os.path.join(sweep_dir, RESULTS_CSV), os.path.join(sweep_dir, RESULTS_JSON)
  with open(csv_path, "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=list(points[0]))
    writer.writeheader()
    writer.writerows(points)
  problems = {p["name"]: f"{p['status']}: {p['problem']}" for p in points if p["status"] != "ok"}
  with open(json_path, "w") as f:
    json.dump({"meta": meta, "points": points, "problems": problems}, f, indent=1)
  return csv_path, json_path


def read(sweep_dir: str) -> dict:
  path = os.path.join(sweep_dir, RESULTS_JSON)
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} not found: run `unimodal-sweep collect` first")
  with open(path) as f:
    return json.load(f)
