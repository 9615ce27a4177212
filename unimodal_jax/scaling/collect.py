"""One table of a sweep's points from its runs' metrics.jsonl: held-out loss overall and per modality at the last
step, tokens (per modality too), FLOPs and parameter counts; runs that diverged or did not finish are named. Paths
go through etils.epath, so a pod sweep is collected from its gs:// directory as it stands."""
import csv
import dataclasses
import io
import json
import math
import os

from etils import epath

from unimodal_jax.scaling import plan as plan_lib

METRICS_FILE = "metrics.jsonl"  # train/metrics.py's name; read here without importing the training stack
RESULTS_CSV = "results.csv"
RESULTS_JSON = "results.json"
MODALITIES = ("text", "image")


def read_rows(path: str | epath.Path) -> dict[int, dict]:
  """metrics.jsonl by step; a resumed run rewrites the steps after its checkpoint, and the last write wins."""
  rows = {}
  path = epath.Path(path)
  if not path.exists():
    return rows
  for i, line in enumerate(path.read_text().splitlines(), 1):
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
  rows = read_rows(epath.Path(run.workdir(sweep_dir)) / METRICS_FILE)
  record = {"name": run.name, "variant": run.variant, "size": run.size, "budget": run.budget, "N": run.n,
            **{f"params_{k}": v for k, v in dataclasses.asdict(run.params).items()},
            "tokens": run.tokens, "flops": run.point_flops, "num_steps": run.num_steps,
            "branch_of": run.depends_on}
  tokens = modality_tokens(rows, run.num_steps)
  if run.depends_on:  # the stable part was trained by the parent
    parent = read_rows(epath.Path(runs_by_name[run.depends_on].workdir(sweep_dir)) / METRICS_FILE)
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
  csv_path, json_path = epath.Path(sweep_dir) / RESULTS_CSV, epath.Path(sweep_dir) / RESULTS_JSON
  table = io.StringIO(newline="")
  writer = csv.DictWriter(table, fieldnames=list(points[0]))
  writer.writeheader()
  writer.writerows(points)
  csv_path.parent.mkdir(parents=True, exist_ok=True)
  csv_path.write_text(table.getvalue())
  problems = {p["name"]: f"{p['status']}: {p['problem']}" for p in points if p["status"] != "ok"}
  json_path.write_text(json.dumps({"meta": meta, "points": points, "problems": problems}, indent=1))
  return os.fspath(csv_path), os.fspath(json_path)


def read(sweep_dir: str) -> dict:
  path = epath.Path(sweep_dir) / RESULTS_JSON
  if not path.exists():
    raise FileNotFoundError(f"{path} not found: run `unimodal-sweep collect` first")
  return json.loads(path.read_text())
