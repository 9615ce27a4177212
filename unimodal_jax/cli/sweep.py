"""`unimodal-sweep`: scaling-law sweeps end to end (docs/scaling.md).

  unimodal-sweep plan    --spec configs/sweeps/tiny.py
  unimodal-sweep launch  --spec configs/sweeps/tiny.py --sweep_dir runs/sweep [--parallel N] [--dry_run]
  unimodal-sweep launch  --spec ... --sweep_dir gs://BUCKET/sweep --backend tpu_vm|xpk [pod flags] [--dry_run]
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

from etils import epath

# The fits call L-BFGS-B on 5 parameters thousands of times; OpenBLAS threads spinning on a busy machine make that
# ~10x slower. Set before numpy is imported.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from unimodal_jax.config import ConfigError  # noqa: E402
from unimodal_jax.launch import common, tpu_vm, xpk  # noqa: E402
from unimodal_jax.scaling import analysis, collect, launch, plan as plan_lib, plots, pods  # noqa: E402

BACKENDS = ("local", *pods.BACKENDS)
FITS_JSON = "fits.json"


def add_spec(p, sweep_dir_required=True):
  p.add_argument("--spec", required=True, help="Sweep spec: a configs/sweeps/*.py file.")
  p.add_argument("--sweep_dir", required=sweep_dir_required, help="Where runs/, results and plots go.")


def add_pod_flags(p):
  """unimodal-launch-tpu-vm's and unimodal-launch-xpk's flags, for every run of the sweep alike."""
  p.add_argument("--name", default="", help="tpu_vm: prefix of the queued resources, one per run (<name>-<run>).")
  p.add_argument("--cluster", default="", help="xpk: the cluster the workloads run on.")
  p.add_argument("--workload", default="", help="xpk: prefix of the workloads, one per run (<workload>-<run>).")
  p.add_argument("--project", default="", help="Pods: GCP project id.")
  p.add_argument("--zone", default="", help="Pods: GCP zone, e.g. us-east5-a.")
  p.add_argument("--accelerator_type", default="", help="Pods: the slice each run gets, e.g. v5p-8.")
  p.add_argument("--num_slices", type=int, default=1, help="Pods: slices per run.")
  p.add_argument("--provisioning", default="on-demand", help="Pods: capacity (tpu_vm: on-demand, spot, reserved, "
                 "best-effort; xpk: the cluster's).")
  p.add_argument("--wheel", default="", help="tpu_vm: local unimodal_jax wheel installed on every worker.")
  p.add_argument("--package", default="", help="tpu_vm: instead of --wheel, a pip requirement.")
  p.add_argument("--docker_image", default="", help="xpk: the image the workloads run (unimodal-launch-xpk image).")
  p.add_argument("--priority", default="medium", help="xpk: workload priority.")
  p.add_argument("--mount_bucket", default="", help="Pods: a bucket mounted at /gcs/<bucket> on every host.")
  p.add_argument("--env", action="append", default=[], help="Pods: KEY=VALUE for unimodal-train (repeatable).")


def pod_args(args):
  env = common.parse_env(args.env)
  if args.backend == "tpu_vm":
    return tpu_vm.TpuVmArgs(name=args.name, project=args.project, zone=args.zone,
                            accelerator_type=args.accelerator_type, num_slices=args.num_slices,
                            provisioning=args.provisioning, wheel=args.wheel, package=args.package, env=env,
                            mount_bucket=args.mount_bucket)
  return xpk.XpkArgs(cluster=args.cluster, workload=args.workload, project=args.project, zone=args.zone,
                     tpu_type=args.accelerator_type, docker_image=args.docker_image, num_slices=args.num_slices,
                     provisioning=args.provisioning, priority=args.priority, env=env, mount_bucket=args.mount_bucket)


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
  p.add_argument("--backend", choices=BACKENDS, default="local", help="Where runs execute: local processes, or one "
                 "TPU slice per run (tpu_vm: a queued resource each; xpk: a workload each on --cluster).")
  p.add_argument("--parallel", type=int, default=launch.default_parallelism(),
                 help="Runs at once (local: one single-CPU-device process each; default: the number of cores).")
  p.add_argument("--retries", type=int, default=1, help="Restarts of a failing run before it is reported failed.")
  p.add_argument("--dry_run", action="store_true", help="Print the commands in launch order; start nothing.")
  add_pod_flags(p)
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


def cmd_pods(args, spec, runs):
  sweep_dir, base = args.sweep_dir.rstrip("/"), pods.pod_base_config(spec.base_config)
  pods.check_runs(runs, sweep_dir)
  target = pod_args(args)
  if args.dry_run:
    print(pods.dry_run(args.backend, target, runs, base, sweep_dir))
    return 0
  states = pods.submit(args.backend, target, runs, base, sweep_dir, log=functools.partial(print, flush=True))
  counts = {s: sum(v == s for v in states.values()) for s in ("done", "submitted", "waiting", "failed")}
  print(", ".join(f"{n} {s}" for s, n in counts.items()))
  return 1 if counts["failed"] else 0


def cmd_launch(args, spec, runs):
  if args.backend != "local":
    return cmd_pods(args, spec, runs)
  backend = launch.local_backend
  if "://" in args.sweep_dir:
    raise ValueError(f"--sweep_dir {args.sweep_dir}: the local backend writes local run directories; a bucket sweep "
                     "runs on pods (--backend tpu_vm|xpk)")
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


def sweep_path(sweep_dir: str) -> str:
  """A bucket path as given (collect, fit and plot read and write gs:// sweeps in place), a local one absolute."""
  return sweep_dir if "://" in sweep_dir else os.path.abspath(sweep_dir)


def meta(spec) -> dict:
  out = {"spec": spec.name, "budget_kind": spec.budget_kind, "base_config": spec.base_config}
  if spec.get("mixed_modal"):
    out["mixed_modal"] = list(spec.mixed_modal)
    out["barrier_tokens_per_param"] = spec.get("barrier_tokens_per_param", 20.0)
  return out


def cmd_collect(args, spec, runs):
  sweep_dir = sweep_path(args.sweep_dir)
  points = collect.collect(runs, sweep_dir)
  paths = collect.write(points, sweep_dir, meta(spec))
  ok = sum(p["status"] == "ok" for p in points)
  print(f"{ok}/{len(points)} points; wrote {paths[0]} and {paths[1]}")
  for p in points:
    if p["status"] != "ok":
      print(f"  {p['name']}: {p['status']}: {p['problem']}")


def cmd_fit(args):
  sweep_dir = sweep_path(args.sweep_dir)
  report = analysis.analyse(collect.read(sweep_dir), bootstrap=args.bootstrap, seed=args.seed)
  path = epath.Path(sweep_dir) / FITS_JSON
  path.write_text(json.dumps(report, indent=1))
  print(analysis.summary(report))
  print(f"wrote {path}")


def cmd_plot(args):
  sweep_dir = sweep_path(args.sweep_dir)
  path = epath.Path(sweep_dir) / FITS_JSON
  if not path.exists():
    raise FileNotFoundError(f"{path} not found: run `unimodal-sweep fit` first")
  report = json.loads(path.read_text())
  for p in plots.plot_all(collect.read(sweep_dir), report, os.path.join(sweep_dir, plots.PLOTS_DIR)):
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
      print(launch.status_table(runs, sweep_path(args.sweep_dir)))
      return 0
    return {"plan": cmd_plan, "launch": cmd_launch, "collect": cmd_collect}[args.command](args, spec, runs) or 0
  except (ConfigError, FileNotFoundError, ValueError) as e:  # LaunchError is a ValueError
    print(f"unimodal-sweep {args.command}: {e}", file=sys.stderr)
    return 2


def run():
  sys.exit(main())


if __name__ == "__main__":
  run()
