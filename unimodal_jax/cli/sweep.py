"""`unimodal-sweep`: scaling-law sweeps end to end (docs/scaling.md).

  unimodal-sweep plan    --spec configs/sweeps/tiny.py
  unimodal-sweep launch  --spec configs/sweeps/tiny.py --sweep_dir runs/sweep [--parallel N] [--dry_run]
  unimodal-sweep status  --spec configs/sweeps/tiny.py --sweep_dir runs/sweep
  unimodal-sweep collect --spec configs/sweeps/tiny.py --sweep_dir runs/sweep   # results.csv, results.json
  unimodal-sweep fit     --sweep_dir runs/sweep [--bootstrap 100]                # fits.json
  unimodal-sweep plot    --sweep_dir runs/sweep                                  # plots/*.png

`unimodal-sweep <command> --help` prints that command's flags.
"""
import argparse
import functools
import json
import os
import sys

# The fits call L-BFGS-B on 5 parameters thousands of times; OpenBLAS threads spinning on a busy machine make that
# ~10x slower. Set before numpy is imported.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from unimodal_jax.config import ConfigError  # noqa: E402
from unimodal_jax.scaling import analysis, collect, launch, plan as plan_lib, plots  # noqa: E402

BACKENDS = {"local": launch.local_backend}
FITS_JSON = "fits.json"


def add_spec(p, sweep_dir_required=True):
  p.add_argument("--spec", required=True, help="Sweep spec: a configs/sweeps/*.py file.")
  p.add_argument("--sweep_dir", required=sweep_dir_required, help="Where runs/, results and plots go.")


def parser() -> argparse.ArgumentParser:
  top = argparse.ArgumentParser(prog="unimodal-sweep", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
  sub = top.add_subparsers(dest="command", required=True)
  p = sub.add_parser("plan", help="Print the runs a spec expands to.", description="Print the runs a spec expands "
                     "to: overrides, steps, tokens, FLOPs and which checkpoint each branch starts from.")
  add_spec(p, sweep_dir_required=False)
  p.add_argument("--commands", action="store_true", help="Also print each run's config overrides.")
  p = sub.add_parser("launch", help="Run every run that is not done.", description="Run every run that is not "
                     "done (finished runs are skipped, interrupted ones resume, a failing one is retried).")
  add_spec(p)
  p.add_argument("--backend", choices=sorted(BACKENDS), default="local", help="Where runs execute.")
  p.add_argument("--parallel", type=int, default=launch.default_parallelism(),
                 help="Runs at once (local: one single-CPU-device process each; default: the number of cores).")
  p.add_argument("--retries", type=int, default=1, help="Restarts of a failing run before it is reported failed.")
  p.add_argument("--dry_run", action="store_true", help="Print the commands in launch order; start nothing.")
  p = sub.add_parser("status", help="Each run's state and progress.", description="Each run's state (done, "
                     "partial, ready, waiting, failed) and its last checkpointed step.")
  add_spec(p)
  p = sub.add_parser("collect", help="Write results.csv and results.json.", description="One row per point: "
                     "held-out loss overall and per modality, tokens, FLOPs, parameter counts; problems named.")
  add_spec(p)
  p = sub.add_parser("fit", help="Fit the scaling laws; write fits.json.", description="Approach 3 with bootstrap "
                     "intervals, Approach 2 for FLOP budgets, compute-optimal exponents, held-out-size prediction, "
                     "per variant and per modality; the mixed-modal law when the spec names its variants.")
  p.add_argument("--sweep_dir", required=True, help="A sweep directory with results.json.")
  p.add_argument("--bootstrap", type=int, default=100, help="Bootstrap resamples for the intervals (0: none).")
  p.add_argument("--seed", type=int, default=0, help="Bootstrap seed.")
  p = sub.add_parser("plot", help="Write plots/*.png.", description="Loss vs FLOPs with the frontier, isoFLOP or "
                     "per-budget curves, predicted vs measured with the held-out size marked.")
  p.add_argument("--sweep_dir", required=True, help="A sweep directory with results.json and fits.json.")
  return top


def cmd_plan(args, spec, runs):
  print(plan_lib.table(runs))
  if args.commands:
    for r in runs:
      print(f"{r.name}: " + " ".join(r.train_args(spec.base_config, args.sweep_dir or "<sweep_dir>")[1:]))


def cmd_launch(args, spec, runs):
  backend = BACKENDS[args.backend]
  sweep_dir = os.path.abspath(args.sweep_dir)
  if args.dry_run:
    print(launch.dry_run(runs, spec.base_config, sweep_dir, backend))
    return 0
  if any(launch.run_state(r, sweep_dir).state != "done" for r in runs):
    launch.prepare_shared_data(runs, spec.base_config, sweep_dir)
  states = launch.launch(runs, spec.base_config, sweep_dir, backend, parallel=args.parallel, retries=args.retries,
                         log=functools.partial(print, flush=True))
  failed = [name for name, s in states.items() if s != "done"]
  print(f"{len(states) - len(failed)}/{len(states)} runs done" + (f"; failed: {', '.join(failed)}" if failed else ""))
  return 1 if failed else 0


def meta(spec) -> dict:
  out = {"spec": spec.name, "budget_kind": spec.budget_kind, "base_config": spec.base_config}
  if spec.get("mixed_modal"):
    out["mixed_modal"] = list(spec.mixed_modal)
    out["barrier_tokens_per_param"] = spec.get("barrier_tokens_per_param", 20.0)
  return out


def cmd_collect(args, spec, runs):
  points = collect.collect(runs, os.path.abspath(args.sweep_dir))
  paths = collect.write(points, args.sweep_dir, meta(spec))
  ok = sum(p["status"] == "ok" for p in points)
  print(f"{ok}/{len(points)} points; wrote {paths[0]} and {paths[1]}")
  for p in points:
    if p["status"] != "ok":
      print(f"  {p['name']}: {p['status']}: {p['problem']}")


def cmd_fit(args):
  report = analysis.analyse(collect.read(args.sweep_dir), bootstrap=args.bootstrap, seed=args.seed)
  path = os.path.join(args.sweep_dir, FITS_JSON)
  with open(path, "w") as f:
    json.dump(report, f, indent=1)
  print(analysis.summary(report))
  print(f"wrote {path}")


def cmd_plot(args):
  path = os.path.join(args.sweep_dir, FITS_JSON)
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} not found: run `unimodal-sweep fit` first")
  with open(path) as f:
    report = json.load(f)
  for p in plots.plot_all(collect.read(args.sweep_dir), report, os.path.join(args.sweep_dir, plots.PLOTS_DIR)):
    print(f"wrote {p}")


def overview(top: argparse.ArgumentParser) -> str:
  """The top-level --help: the usage above and every command's flags, as the other unimodal-* commands print them."""
  commands = next(a for a in top._actions if isinstance(a, argparse._SubParsersAction)).choices
  flags = {}
  for command, sub in commands.items():
    for action in sub._actions:
      if action.option_strings and action.dest != "help":
        flags.setdefault(action.option_strings[0], [action.help, []])[1].append(command)
  lines = [(__doc__ or "").strip(), "", "flags:"]
  lines += [f"  {flag}: {help_text} ({', '.join(cmds)})" for flag, (help_text, cmds) in sorted(flags.items())]
  return "\n".join(lines)


def main(argv=None) -> int:
  argv = sys.argv[1:] if argv is None else argv
  top = parser()
  if argv in (["--help"], ["-h"]):
    print(overview(top))
    return 0
  args = top.parse_args(argv)
  try:
    if args.command in ("fit", "plot"):
      (cmd_fit if args.command == "fit" else cmd_plot)(args)
      return 0
    spec = plan_lib.load_spec(args.spec)
    runs = plan_lib.plan(spec)
    if args.command == "status":
      print(launch.status_table(runs, os.path.abspath(args.sweep_dir)))
      return 0
    return {"plan": cmd_plan, "launch": cmd_launch, "collect": cmd_collect}[args.command](args, spec, runs) or 0
  except (ConfigError, FileNotFoundError, ValueError) as e:
    print(f"unimodal-sweep {args.command}: {e}", file=sys.stderr)
    return 2


def run():
  sys.exit(main())


if __name__ == "__main__":
  run()
