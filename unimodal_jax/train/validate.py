"""Validation of a run's config before anything is compiled: the optimizer, schedule and train-loop keys here, then
every part's own `check` (vq, data, model, parallel). Each error names the config key and the offending values."""
from unimodal_jax.config import check as _check
from unimodal_jax.data import checks as data_checks
from unimodal_jax.model import checks as model_checks
from unimodal_jax.parallel import checks as parallel_checks
from unimodal_jax.train.state import DECAY_EXCLUDABLE, SCHEDULES, WSD_DECAYS
from unimodal_jax.vq import checks as vq_checks


def check(config, batch_shards: int) -> None:
  """Optimizer, schedule, accumulation, input prefetch, initialisation, evaluation and profiling keys."""
  o, t, e, m = config.optim, config.train, config.eval, config.model
  _check(t.num_steps >= 1, "train.num_steps", f"must be >= 1, got {t.num_steps}")
  _check(t.batch_size >= 1, "train.batch_size", f"must be >= 1, got {t.batch_size}")
  for key in ("log_every", "checkpoint_every", "keep_checkpoints"):
    _check(t[key] >= 1, f"train.{key}", f"must be >= 1, got {t[key]}")
  _check(t.peak_tflops_per_device >= 0, "train.peak_tflops_per_device",
         f"must be >= 0 (0: from the chip table), got {t.peak_tflops_per_device}")
  _check(o.learning_rate > 0, "optim.learning_rate", f"must be > 0, got {o.learning_rate}")
  _check(0 <= o.end_lr_ratio <= 1, "optim.end_lr_ratio", f"must be in [0, 1], got {o.end_lr_ratio}")
  for key in ("b1", "b2"):
    _check(0 <= o[key] < 1, f"optim.{key}", f"must be in [0, 1), got {o[key]}")
  _check(o.eps > 0, "optim.eps", f"must be > 0, got {o.eps}")
  _check(o.weight_decay >= 0, "optim.weight_decay", f"must be >= 0, got {o.weight_decay}")
  _check(o.clip_norm > 0, "optim.clip_norm", f"must be > 0 (a large value clips nothing), got {o.clip_norm}")
  _check(0 <= o.warmup_steps <= t.num_steps, "optim.warmup_steps",
         f"must be in [0, train.num_steps={t.num_steps}], got {o.warmup_steps}")
  _check(o.schedule in SCHEDULES, "optim.schedule", f"{o.schedule!r} is not one of {SCHEDULES}")
  if o.schedule == "wsd":
    _check(o.wsd_decay in WSD_DECAYS, "optim.wsd_decay", f"{o.wsd_decay!r} is not one of {WSD_DECAYS}")
    _check(0 < o.decay_steps <= t.num_steps - o.warmup_steps, "optim.decay_steps",
           f"{o.decay_steps} must be in [1, train.num_steps - optim.warmup_steps = {t.num_steps - o.warmup_steps}]")
  unknown = set(o.weight_decay_exclude) - set(DECAY_EXCLUDABLE)
  _check(not unknown, "optim.weight_decay_exclude", f"unknown classes {sorted(unknown)}; known: {DECAY_EXCLUDABLE}")
  _check(t.grad_accum_steps >= 1, "train.grad_accum_steps", f"must be >= 1, got {t.grad_accum_steps}")
  _check(t.batch_size % (batch_shards * t.grad_accum_steps) == 0, "train.grad_accum_steps",
         f"train.batch_size={t.batch_size} must split into {t.grad_accum_steps} microbatches of equal rows on each "
         f"of the {batch_shards} data-parallel shards")
  _check(t.max_consecutive_nonfinite >= 1, "train.max_consecutive_nonfinite",
         f"must be >= 1, got {t.max_consecutive_nonfinite}")
  _check(t.prefetch_batches >= 0, "train.prefetch_batches", f"must be >= 0, got {t.prefetch_batches}")
  _check(t.keep_period >= 0, "train.keep_period", f"must be >= 0, got {t.keep_period}")
  _check(sum(bool(x) for x in (t.init_from, t.upcycle_from, t.branch_from)) <= 1, "train.branch_from",
         f"give at most one of train.branch_from={t.branch_from!r}, init_from={t.init_from!r}, "
         f"upcycle_from={t.upcycle_from!r}")
  _check(not t.upcycle_from or m.num_experts > 1, "train.upcycle_from",
         f"upcycling initialises a Mixture-of-Transformers; model.num_experts={m.num_experts}")
  _check(t.profile_start_step < 0 or t.profile_num_steps >= 1, "train.profile_num_steps",
         f"must be >= 1 when profiling, got {t.profile_num_steps}")
  _check(e.every >= 0, "eval.every", f"must be >= 0, got {e.every}")
  _check(e.every == 0 or e.num_batches >= 1, "eval.num_batches", f"must be >= 1, got {e.num_batches}")


def validate(config, num_devices: int, process_count: int = 1) -> tuple[int, int, int]:
  """Raise ConfigError for any setting that cannot run on `num_devices` devices; return the mesh shape."""
  model_checks.check(config)
  vq_checks.check(config)
  data_checks.check(config)
  data, fsdp, tensor = parallel_checks.check(config, num_devices, process_count)
  check(config, data * fsdp)
  return data, fsdp, tensor
