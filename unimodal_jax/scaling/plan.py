"""Expand a sweep spec (configs/sweeps/*.py) into named runs: config overrides, step counts, FLOPs, dependencies.

With WSD, each (variant, size) trains one run to its largest budget; every smaller budget is a cooldown branch started
(train.branch_from) from that run's stable-phase checkpoint and waits for it. Nothing here starts a process.
"""
import dataclasses
import math
import os

from unimodal_jax.config import ConfigError, check, load_config_file
from unimodal_jax.scaling import families

BUDGET_KINDS = ("tokens_per_param", "flops")
PARAM_COUNTS = ("non_embedding", "total", "active_non_embedding", "active_total")
RUNS_DIR = "runs"


@dataclasses.dataclass(frozen=True)
class Run:
  name: str
  variant: str
  size: int
  budget: float  # the nominal budget (tokens per parameter or FLOPs) this point was planned for
  overrides: tuple[str, ...]  # "key=value" for --config.key=value, in order
  num_steps: int
  tokens: int  # tokens the point has seen at its end (branch: stable part included)
  params: families.ParamCounts
  n: int  # the parameter count the fits use (spec.param_count)
  flops_per_token: float
  run_flops: float  # what this run computes (a branch: only its cooldown)
  point_flops: float  # what the (N, D) point cost in all
  depends_on: str = ""  # the run whose checkpoint this one branches from
  branch_step: int = 0
  shared_data: bool = False  # data.dir = <sweep_dir>/data, prepared once by the launcher (embedded data)

  def workdir(self, sweep_dir: str) -> str:
    return os.path.join(sweep_dir, RUNS_DIR, self.name)

  def wait_for(self, sweep_dir: str) -> str:
    """The checkpoint directory that must exist before this run can start ('' if none)."""
    if not self.depends_on:
      return ""
    return os.path.join(sweep_dir, RUNS_DIR, self.depends_on, "checkpoints", str(self.branch_step))

  def train_args(self, base_config: str, sweep_dir: str) -> list[str]:
    """unimodal-train's arguments (without the program name)."""
    args = [f"--config={base_config}", f"--workdir={self.workdir(sweep_dir)}"]
    args += [f"--config.{o}" for o in self.overrides]
    if self.shared_data:
      args.append(f"--config.data.dir={data_dir(sweep_dir)}")
    if self.depends_on:
      args.append(f"--config.train.branch_from={self.wait_for(sweep_dir)}")
    return args


def data_dir(sweep_dir: str) -> str:
  return os.path.join(sweep_dir, "data")


def load_spec(path: str):
  """The spec's get_config(), with base_config resolved against the spec file's directory."""
  spec = load_config_file(path)
  for key in ("name", "base_config", "family", "sizes", "budget_kind", "budgets", "variants"):
    check(key in spec, key, f"missing from the sweep spec {path}")
  base = spec.base_config
  spec.base_config = os.path.normpath(base if os.path.isabs(base) else os.path.join(os.path.dirname(path), base))
  if not os.path.exists(spec.base_config):
    raise ConfigError(f"config.base_config: {base!r} not found (resolved to {spec.base_config}) in {path}")
  return spec


def apply_overrides(config, overrides) -> None:
  """Set "a.b=value" on a ConfigDict the way --config.a.b=value would, parsed by the field's current type."""
  for item in overrides:
    key, sep, text = item.partition("=")
    check(bool(sep), "overrides", f"{item!r} is not key=value")
    *parents, leaf = key.split(".")
    node = config
    for p in parents:
      check(p in node, key, "no such config key")
      node = node[p]
    check(leaf in node, key, "no such config key")
    node[leaf] = parse_value(key, type(node[leaf]), text)


def parse_value(key: str, kind: type, text: str):
  if kind is bool:
    check(text.lower() in ("true", "false"), key, f"expected true or false, got {text!r}")
    return text.lower() == "true"
  if kind in (int, float, str):
    try:
      return kind(text)
    except ValueError:
      raise ConfigError(f"config.{key}: expected {kind.__name__}, got {text!r}") from None
  raise ConfigError(f"config.{key}: a sweep cannot override a {kind.__name__} field")


def format_value(value) -> str:
  return repr(value) if isinstance(value, float) else str(value).lower() if isinstance(value, bool) else str(value)


def check_spec(spec):
  families.check_family(spec.family)
  check(spec.budget_kind in BUDGET_KINDS, "budget_kind", f"{spec.budget_kind!r} is not one of {BUDGET_KINDS}")
  check(len(spec.budgets) > 0 and all(b > 0 for b in spec.budgets), "budgets", f"need values > 0, got "
        f"{tuple(spec.budgets)}")
  check(len(set(spec.sizes)) == len(spec.sizes) > 0, "sizes", f"need distinct size indices, got {tuple(spec.sizes)}")
  check(len(spec.variants) > 0, "variants", "need at least one variant (e.g. dense: ())")
  check(spec.get("param_count", "non_embedding") in PARAM_COUNTS, "param_count", f"must be one of {PARAM_COUNTS}")
  check(0 < spec.get("cooldown_fraction", 0.2) < 1, "cooldown_fraction", "must be in (0, 1)")
  check(spec.get("steps_multiple", 1) >= 1, "steps_multiple", "must be >= 1")
  check(0 < spec.get("branch_grid", 0.05) <= 0.5, "branch_grid", "must be in (0, 0.5]")
  for variant, sizes in spec.get("variant_sizes", {}).items():
    check(variant in spec.variants, f"variant_sizes.{variant}", f"is not one of the variants {sorted(spec.variants)}")
    check(len(set(sizes)) == len(sizes) > 0, f"variant_sizes.{variant}", f"need distinct size indices, got "
          f"{tuple(sizes)}")
  for variant in spec.get("mixed_modal", ()):
    check(variant in spec.variants, "mixed_modal", f"{variant!r} is not one of the variants {sorted(spec.variants)}")


def variant_sizes(spec, variant: str) -> tuple[int, ...]:
  """The sizes a variant trains: spec.variant_sizes[variant] if given, else spec.sizes."""
  return tuple(spec.get("variant_sizes", {}).get(variant, spec.sizes))


def steps_for(tokens: float, tokens_per_step: int, multiple: int) -> int:
  """Whole multiples of `multiple`, at least two (a WSD run needs a stable and a cooldown part)."""
  return max(2 * multiple, multiple * round(tokens / tokens_per_step / multiple))


def branch_grid(top_steps: int, fraction: float, multiple: int) -> int:
  """The step grid branch points snap to: `fraction` of the longest run, in whole multiples of `multiple`."""
  return multiple * max(1, round(fraction * top_steps / multiple))


def plan(spec) -> list[Run]:
  """All runs of the sweep, each dependency before its dependents."""
  check_spec(spec)
  wsd, multiple = spec.get("wsd", True), spec.get("steps_multiple", 1)
  runs = []
  for variant, variant_overrides in sorted(spec.variants.items()):
    for size in variant_sizes(spec, variant):
      shape = families.size_rule(spec.family, size)
      overrides = [f"{k}={format_value(v)}" for k, v in shape.items()]
      overrides += list(spec.get("overrides", ())) + list(variant_overrides)
      config = load_config_file(spec.base_config)
      apply_overrides(config, overrides)
      runs += size_runs(spec, variant, size, config, overrides, wsd, multiple)
  names = [r.name for r in runs]
  duplicates = sorted({n for n in names if names.count(n) > 1})
  check(not duplicates, "budgets", f"budgets round to the same run names {duplicates}")
  return runs


def size_runs(spec, variant, size, config, overrides, wsd: bool, multiple: int) -> list[Run]:
  counts = families.param_counts(config.model)
  n = getattr(counts, spec.get("param_count", "non_embedding"))
  per_token = families.train_flops_per_token(config)
  tokens_per_step = config.train.batch_size * config.data.seq_len
  steps = {}
  for budget in sorted(spec.budgets):
    tokens = budget * n if spec.budget_kind == "tokens_per_param" else budget / per_token
    steps[budget] = steps_for(tokens, tokens_per_step, multiple)
  fraction = spec.get("cooldown_fraction", 0.2)
  decay = {b: min(s - multiple, max(multiple, multiple * round(fraction * s / multiple))) if wsd else 0
           for b, s in steps.items()}
  warmup = config.optim.warmup_steps
  top = max(steps)
  if wsd:  # branch points on a coarse grid, so the stable run keeps a handful of checkpoints, not one per gcd step
    grid = branch_grid(steps[top], spec.get("branch_grid", 0.05), multiple)
    steps = {b: s if b == top else max(grid, grid * round((s - decay[b]) / grid)) + decay[b] for b, s in steps.items()}
    points = {b: steps[b] - decay[b] for b in steps if b != top}
    same = sorted(b for b in points if list(points.values()).count(points[b]) > 1)
    check(not same, "branch_grid", f"{variant} size {size}: budgets {same} snap to the same branch point on the "
          f"{grid}-step grid; lower branch_grid or spread the budgets")
  label = (lambda b: f"r{b:g}") if spec.budget_kind == "tokens_per_param" else (lambda b: f"c{b:.2e}")
  branch_points = sorted({steps[b] - decay[b] for b in steps if b != top})
  check(not branch_points or branch_points[-1] <= steps[top] - decay[top], "cooldown_fraction",
        f"{variant} size {size}: a branch at step {branch_points[-1] if branch_points else 0} would be past the "
        f"stable phase of its run (decay from step {steps[top] - decay[top]})")
  keep = math.gcd(*branch_points) if branch_points else 0
  out = []
  for budget in [top] + sorted(b for b in steps if b != top):
    s = steps[budget]
    run_overrides = list(overrides)
    if wsd:
      check(s - decay[budget] >= max(warmup, 1), "budgets", f"{variant} size {size} budget {budget:g}: the cooldown "
            f"would start at step {s - decay[budget]}, inside the {warmup}-step warmup; raise the budget")
      run_overrides += ["optim.schedule=wsd", f"optim.decay_steps={decay[budget]}"]
    if budget == top and wsd and branch_points:  # keep every branch point's checkpoint until its branch reads it
      run_overrides += [f"train.checkpoint_every={keep}", f"train.keep_period={keep}"]
    run_overrides.append(f"train.num_steps={s}")
    if not config.eval.every:  # each point's loss is its held-out loss at its last step
      run_overrides.append(f"eval.every={s}")
    branch = wsd and budget != top
    name = f"{variant}_s{size}_{label(budget)}"
    out.append(Run(
        name=name, variant=variant, size=size, budget=float(budget), overrides=tuple(run_overrides), num_steps=s,
        tokens=s * tokens_per_step, params=counts, n=n, flops_per_token=per_token,
        run_flops=per_token * tokens_per_step * (decay[budget] if branch else s),
        point_flops=per_token * tokens_per_step * s,
        depends_on=out[0].name if branch else "", branch_step=s - decay[budget] if branch else 0,
        shared_data=config.data.source == "embedded" and not config.data.dir))
  return out


def table(runs: list[Run]) -> str:
  """The plan as a fixed-width table."""
  lines = [f"{'run':28s} {'N':>10s} {'N total':>10s} {'steps':>7s} {'tokens':>11s} {'run FLOPs':>10s} "
           f"{'point FLOPs':>11s}  branches from"]
  for r in runs:
    after = f"{r.depends_on} @ step {r.branch_step}" if r.depends_on else ""
    lines.append(f"{r.name:28s} {r.n:10,d} {r.params.total:10,d} {r.num_steps:7d} {r.tokens:11,d} "
                 f"{r.run_flops:10.3e} {r.point_flops:11.3e}  {after}")
  total = sum(r.run_flops for r in runs)
  lines.append(f"{len(runs)} runs, {total:.3e} FLOPs to run; points' FLOPs if trained separately: "
               f"{sum(r.point_flops for r in runs):.3e}")
  return "\n".join(lines)
