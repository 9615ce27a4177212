"""Validation of the `config.sample` keys (periodic samples during training), before anything is compiled."""
from unimodal_jax.config import check as _check
from unimodal_jax.sample import constraints


def check(config) -> None:
  s = config.sample
  _check(s.every >= 0, "sample.every", f"must be >= 0, got {s.every}")
  if not s.every:
    return
  _check(len(s.prompts) >= 1 and all(isinstance(p, str) for p in s.prompts), "sample.prompts",
         f"needs at least one prompt string, got {s.prompts!r}")
  _check(s.mode in constraints.MODES, "sample.mode", f"{s.mode!r} is not one of {constraints.MODES}")
  _check(s.num_samples >= 1, "sample.num_samples", f"must be >= 1, got {s.num_samples}")
  _check(s.max_new_tokens >= 1, "sample.max_new_tokens", f"must be >= 1, got {s.max_new_tokens}")
  _check(s.temperature >= 0, "sample.temperature", f"must be >= 0, got {s.temperature}")
  _check(s.top_k >= 0, "sample.top_k", f"must be >= 0, got {s.top_k}")
  _check(0 < s.top_p <= 1, "sample.top_p", f"must be in (0, 1], got {s.top_p}")
  _check(s.cfg >= 0, "sample.cfg", f"must be >= 0 (0 = no guidance), got {s.cfg}")
