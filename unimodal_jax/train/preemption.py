"""Preemption: notice a SIGTERM and agree, across processes, on the step boundary at which to save and stop.

Multi-process runs use JAX's preemption sync service (started by `jax.distributed.initialize`; it catches
SIGTERM on any host and picks a step every host reaches); a single process catches SIGTERM itself.
"""
import signal
import threading

import jax
from jax.experimental import multihost_utils


class PreemptionWatch:
  """`reached(step)` is True at the step boundary where this run should save and exit (every process agrees)."""

  def __init__(self):
    self._multiprocess = jax.process_count() > 1
    self._notice = threading.Event()
    self._previous = None
    if not self._multiprocess:
      self._previous = signal.signal(signal.SIGTERM, lambda *_: self._notice.set())

  def reached(self, step: int) -> bool:
    if self._multiprocess:
      return multihost_utils.reached_preemption_sync_point(step)
    return self._notice.is_set()

  def close(self):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
      self._previous = None
