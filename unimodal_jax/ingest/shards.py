"""Atomic, resumable ArrayRecord output for every ingest command, and what a bad input does (--on_bad_record).

`<out_dir>/ingest_plan.json` (what the shards are made from) is written before any shard. Shard k is written under a
hidden temporary name and renamed when complete (on an object store: written locally, then uploaded to its final
name, which appears only once complete), after its `.stats.json`; so a directory never holds a partial
`*.array_record`; and `ingest_done.json` (the totals) is written last, without which training refuses the
directory (`data/sources.shard_paths`): a run stopped by a bad input leaves no data set to train on. A rerun with
the same plan skips finished shards and redoes the rest; a directory whose shards come from another plan, or has
shards but no plan, is refused.
"""
import collections
import json
import os
import tempfile

from absl import logging
from array_record.python import array_record_module
from etils import epath

from unimodal_jax.config import ARRAY_RECORD_WRITER_OPTIONS
from unimodal_jax.data.sources import INGEST_DONE_FILE, INGEST_PLAN_FILE as PLAN_FILE
POLICIES = ("raise", "skip")


class BadRecordError(ValueError):
  """An input that cannot become a document, with --on_bad_record=raise."""


class BadRecords:
  """Applies --on_bad_record to inputs that cannot become documents: raise naming the input, or log it and count it
  by reason."""

  def __init__(self, policy: str):
    if policy not in POLICIES:
      raise ValueError(f"--on_bad_record={policy!r} is not one of {POLICIES}")
    self.policy = policy
    self.skipped = collections.Counter()
    self.names = []

  def __call__(self, where: str, reason: str, error) -> None:
    if self.policy == "raise":
      raise BadRecordError(f"{where}: {error} (--on_bad_record=skip skips such inputs)")
    logging.warning("skipped %s (%s: %s)", where, reason, error)
    self.skipped[reason] += 1
    self.names.append(where)


class ShardSet:
  """The shards `<prefix>-<k>-of-<n>.array_record` of one plan in `out_dir` (a local path or gs://...)."""

  def __init__(self, out_dir: str, prefix: str, num_shards: int, plan: dict):
    self.out_dir, self.prefix, self.num_shards = epath.Path(out_dir), prefix, num_shards
    self.plan = {"prefix": prefix, "num_shards": num_shards, **plan}

  def name(self, k: int) -> str:
    return f"{self.prefix}-{k:05d}-of-{self.num_shards:05d}"

  def path(self, k: int) -> epath.Path:
    return self.out_dir / f"{self.name(k)}.array_record"

  def _stats_path(self, k: int) -> epath.Path:
    return self.out_dir / f"{self.name(k)}.stats.json"

  def open(self, write_plan: bool) -> None:
    """Checks `out_dir` against the plan (raising ValueError on a mismatch); `write_plan` on one process only."""
    self.out_dir.mkdir(parents=True, exist_ok=True)
    plan_path = self.out_dir / PLAN_FILE
    if plan_path.exists():
      found = json.loads(plan_path.read_text())
      if found != json.loads(json.dumps(self.plan)):
        changed = sorted(k for k in set(found) | set(self.plan) if found.get(k) != self.plan.get(k))
        raise ValueError(f"{self.out_dir} holds shards of another ingest run ({plan_path} differs in {changed}); "
                         f"use a new --out_dir, or delete that one to start over")
      return
    shards = [p.name for p in self.out_dir.glob("*.array_record")]
    if shards:
      raise ValueError(f"{self.out_dir} already has shards ({shards[:3]}...) but no {PLAN_FILE}: they were not "
                       f"written by this command, so they cannot be resumed; use a new --out_dir")
    if write_plan:
      _write_atomic(plan_path, json.dumps(self.plan, indent=1, sort_keys=True).encode())

  def finished(self, k: int) -> dict | None:
    """The stats of shard k if it is complete, else None."""
    if self.path(k).exists() and self._stats_path(k).exists():
      return json.loads(self._stats_path(k).read_text())
    return None

  def write(self, k: int, records, stats: dict) -> None:
    """Writes shard k from `records` (bytes) atomically, its stats first."""
    _write_atomic(self._stats_path(k), json.dumps(stats, sort_keys=True).encode())
    local = _is_local(self.out_dir)
    tmp_dir = str(self.out_dir) if local else tempfile.mkdtemp(prefix="ingest-")
    tmp = os.path.join(tmp_dir, f".{self.name(k)}.array_record.tmp")
    writer = array_record_module.ArrayRecordWriter(tmp, ARRAY_RECORD_WRITER_OPTIONS)
    for r in records:
      writer.write(r)
    writer.close()
    if local:
      os.replace(tmp, self.path(k))
    else:
      with open(tmp, "rb") as f:
        self.path(k).write_bytes(f.read())  # an object appears under its name only once fully uploaded
      os.remove(tmp)
      os.rmdir(tmp_dir)

  def totals(self) -> dict:
    """Summed stats of every shard; raises if one is not finished (call after all processes are done)."""
    totals = {"shards": self.num_shards, "inputs": 0, "documents": 0, "skipped": collections.Counter(),
              "converted": collections.Counter()}
    for k in range(self.num_shards):
      stats = self.finished(k)
      if stats is None:
        raise RuntimeError(f"shard {self.path(k)} is not finished")
      for key in ("inputs", "documents"):
        totals[key] += stats[key]
      for key in ("skipped", "converted"):
        totals[key].update(stats[key])
    totals["skipped"], totals["converted"] = dict(totals["skipped"]), dict(totals["converted"])
    return totals


  def finish(self, totals: dict) -> None:
    """Marks the directory complete (one process, after every shard is finished)."""
    _write_atomic(self.out_dir / INGEST_DONE_FILE, json.dumps(totals, indent=1, sort_keys=True).encode())


def _is_local(path: epath.Path) -> bool:
  return "://" not in os.fspath(path)


def _write_atomic(path: epath.Path, data: bytes) -> None:
  if _is_local(path):
    tmp = path.parent / f".{path.name}.tmp"
    tmp.write_bytes(data)
    os.replace(tmp, path)
  else:
    path.write_bytes(data)  # object stores publish an object only when its upload completes


def summary(totals: dict, out_dir: str) -> str:
  """The one line every ingest command ends with."""
  return (f"wrote {totals['documents']} documents from {totals['inputs']} inputs into {totals['shards']} shards in "
          f"{out_dir}; skipped {totals['skipped'] or 'none'}; converted {totals['converted'] or 'none'}")
