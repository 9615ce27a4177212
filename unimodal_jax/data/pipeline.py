"""The training input pipeline: sources -> this process's records -> shuffle -> mix -> check, format -> pack.

Per source: parse each record into a `Document`, check it against the run's vocabulary, format its task and
render it to ids; a bad record raises (data.on_bad_record='raise', naming file and record) or is skipped,
logged and counted ('skip'). Sources mix by weight, deterministically for config.seed. Batches are numpy and
per process; placing them on devices is `unimodal_jax/parallel`'s job.
"""
import dataclasses
import logging
from collections.abc import Iterator, Sequence

import grain
import jax
import numpy as np
from absl import flags

from unimodal_jax.data import batch as batch_lib
from unimodal_jax.data import documents
from unimodal_jax.data import packing
from unimodal_jax.data import sources as sources_lib
from unimodal_jax.data import tasks
from unimodal_jax.data import vocab as vocab_lib


@dataclasses.dataclass(frozen=True)
class RecordLoader:
  """record (bytes or TFDS example) at a source index -> int32 unified ids, or `packing.Skipped`.

  Grain hands `map_with_index` the index in the repeated stream: epoch * num_records + record.
  """
  source: int  # index among the run's sources, for the per-record task rng
  num_records: int  # of the source
  parser: sources_lib.ShardRecords | sources_lib.TfdsPairs
  vocab: vocab_lib.Vocab
  image_grid: int
  max_tokens: int
  task: tasks.TaskSpec
  seed: int
  on_bad_record: str
  document_kinds: tuple[str, ...]  # the kinds trained on; records of other kinds become `packing.Filtered`

  def _tokens(self, record_index: int, epoch: int, record, where: str) -> np.ndarray:
    if isinstance(record, sources_lib.Unreadable):
      raise record.error
    doc = self.parser.document(record, where)
    documents.check_document(doc, self.vocab, self.image_grid, self.max_tokens, where)
    if doc.kind not in self.document_kinds:
      return packing.Filtered(doc.kind)
    rng = None
    if doc.kind == "image_text_pair":  # a pair's order and caption dropout are drawn anew each epoch
      rng = np.random.default_rng((self.seed, self.source, record_index, epoch))
    return documents.render(tasks.format_segments(doc, self.task, rng), self.vocab)

  def __call__(self, index: int, record):
    epoch, record_index = divmod(index, self.num_records)
    try:
      return self._tokens(record_index, epoch, record, "record")
    except Exception as e:  # noqa: BLE001 -- any failure on a record is a bad record, named by file and index
      where = self.parser.locate(record_index)
      message = str(e).removeprefix("record: ") if isinstance(e, ValueError) else f"{type(e).__name__}: {e}"
      error = ValueError(f"{where}: {message}")
      if self.on_bad_record == "raise":
        raise error from e
      logging.warning("skipping bad record (data.on_bad_record='skip'): %s", error)
      return packing.Skipped(where)


class _CountingIterator(grain.DatasetIterator):
  """Yields PackedBatches; `bad_records` counts the records skipped so far, restored with the state."""

  def __init__(self, parent):
    super().__init__(parent)
    self.bad_records = 0

  def __next__(self) -> batch_lib.PackedBatch:
    batch, skipped = next(self._parent)
    self.bad_records += skipped
    return batch

  def get_state(self):
    return {"parent": self._parent.get_state(), "bad_records": self.bad_records}

  def set_state(self, state):
    self._parent.set_state(state["parent"])
    self.bad_records = state["bad_records"]


class CountBadRecords(grain.IterDataset):
  """(PackedBatch, skipped) -> PackedBatch; its iterator's `bad_records` is the running count for metrics."""

  def __iter__(self):
    return _CountingIterator(self._parent.__iter__())


class _ConcatRowsIterator(grain.DatasetIterator):
  def __init__(self, parents):
    super().__init__()
    self._shards = parents

  @property
  def bad_records(self) -> int:
    return sum(it.bad_records for it in self._shards)

  def __next__(self) -> batch_lib.PackedBatch:
    parts = [next(it) for it in self._shards]
    return jax.tree.map(lambda *rows: np.concatenate(rows), *parts)

  def get_state(self):
    return {"shards": [it.get_state() for it in self._shards]}

  def set_state(self, state):
    for it, shard_state in zip(self._shards, state["shards"], strict=True):
      it.set_state(shard_state)


class ConcatRows(grain.IterDataset):
  """The rows of several data shards' batches, stacked in shard order: one process serving several shards."""

  def __init__(self, shards: Sequence[grain.IterDataset]):
    super().__init__(list(shards))

  def __iter__(self):
    return _ConcatRowsIterator([iter(p) for p in self._parents])


def num_data_shards(config, process_count: int) -> int:
  """Data shards of the run: data.num_shards, or one per process when it is 0."""
  shards = config.data.num_shards or process_count
  if shards % process_count or config.train.batch_size % shards:
    raise ValueError(f"data.num_shards={shards} must be a multiple of the {process_count} processes and divide "
                     f"train.batch_size={config.train.batch_size}")
  return shards


def document_kinds(config) -> tuple[str, ...]:
  """data.document_kinds as a tuple: the comma-separated kinds kept, every kind when it is empty."""
  kept = tuple(k.strip() for k in config.data.document_kinds.split(",") if k.strip())
  return kept or documents.KINDS


def pack_spec(config, batch_size: int, num_records: int = 0) -> packing.PackSpec:
  """`num_records`: of the run's sources, the longest run of records of other kinds tolerated when
  data.document_kinds filters (one whole pass over them)."""
  filtering = set(document_kinds(config)) != set(documents.KINDS)
  return packing.PackSpec(vocab=vocab_lib.from_config(config), seq_len=config.data.seq_len, batch_size=batch_size,
                          loss_weight_text=config.data.loss_weight_text,
                          loss_weight_image=config.data.loss_weight_image,
                          max_filtered_in_a_row=num_records if filtering else 0)


def _shuffle_seed(seed: int, source: int) -> int:
  return int(np.random.SeedSequence((seed, source)).generate_state(1)[0])


def documents_dataset(config, sources: Sequence[sources_lib.Source], *, shard: int = 0,
                      num_shards: int = 1, num_epochs: int | None = None) -> grain.MapDataset:
  """Rendered documents (or `packing.Skipped`) of one data shard, mixed by source weight; endless by default.

  Shard i reads records i, i + num_shards, ... of every source (disjoint shares).
  """
  vocab = vocab_lib.from_config(config)
  grid = config.vq.image_size // config.vq.patch_size
  mixed = []
  for i, source in enumerate(sources):
    loader = RecordLoader(source=i, num_records=len(source.records), parser=source.parser, vocab=vocab,
                          image_grid=grid, max_tokens=config.data.max_document_tokens,
                          task=tasks.TaskSpec.from_config(config),
                          seed=config.seed, on_bad_record=config.data.on_bad_record,
                          document_kinds=document_kinds(config))
    ds = grain.MapDataset.source(source.records).map_with_index(loader)[shard::num_shards]
    if len(ds) == 0:
      raise ValueError(f"data shard {shard} of {num_shards} gets no records from source "
                       f"{source.name or config.data.source!r} ({len(source.records)} records)")
    if config.data.shuffle:
      ds = ds.shuffle(seed=_shuffle_seed(config.seed, i))
    mixed.append(ds.repeat(num_epochs))
  if len(mixed) == 1:
    return mixed[0]
  return grain.MapDataset.mix(mixed, [s.weight for s in sources])


def make_dataset(config, paths: Sequence[str] | None = None, *, process_index: int = 0,
                 process_count: int = 1) -> grain.IterDataset:
  """Endless PackedBatches of [train.batch_size // process_count, data.seq_len] for one process.

  `paths` are the shards of data.source 'embedded' or 'shards'; data.source='mixture' reads data.sources.
  The records are split into `num_data_shards` disjoint data shards, each packed into its own rows; process i
  serves a contiguous block of them. So the global batch depends on data.num_shards, not on the process count:
  a run on 2 hosts and one on 1 host with data.num_shards=2 see the same batches.
  The stream is a function of `config.seed` and `data.worker_count` (each worker packs its own slice of the
  record stream); iterators resume exactly with get_state/set_state, and `iter(ds).bad_records` counts the
  records skipped so far.
  """
  shards = num_data_shards(config, process_count)
  per_process = shards // process_count
  datasets = [shard_dataset(config, paths, shard=process_index * per_process + i, num_shards=shards)
              for i in range(per_process)]
  return datasets[0] if per_process == 1 else ConcatRows(datasets)


def shard_dataset(config, paths: Sequence[str] | None, *, shard: int, num_shards: int) -> grain.IterDataset:
  """Endless PackedBatches of [train.batch_size // num_shards, data.seq_len] from records shard, shard +
  num_shards, ... of every source."""
  batch_size = config.train.batch_size // num_shards
  sources = sources_lib.from_config(config, paths)
  ds = documents_dataset(config, sources, shard=shard, num_shards=num_shards)
  # Not grain's default of 16 threads and 500 buffered records: it rescans that buffer for every record,
  # which costs ~2x the throughput on local disk.
  threads = config.data.read_threads
  ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=threads, prefetch_buffer_size=8 * threads))
  records = sum(len(range(shard, len(s.records), num_shards)) for s in sources)
  ds = packing.PackIterDataset(ds, pack_spec(config, batch_size, records))
  if config.data.worker_count > 0:
    if not flags.FLAGS.is_parsed():  # grain's worker processes read absl flags
      flags.FLAGS.mark_as_parsed()
    ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=config.data.worker_count))
  return CountBadRecords(ds)


def _batch(packed: tuple[batch_lib.PackedBatch, int]) -> batch_lib.PackedBatch:
  return packed[0]


def pack_documents(docs: Sequence[np.ndarray], vocab: vocab_lib.Vocab, seq_len: int, batch_size: int, *,
                   loss_weight_text: float = 1.0, loss_weight_image: float = 1.0) -> Iterator[batch_lib.PackedBatch]:
  """Rendered in-memory documents (int32 unified ids), in order, through the packer of `make_dataset`.

  One pass, no shuffle; the last batch may have fewer than `batch_size` rows.
  """
  source = grain.MapDataset.source([np.asarray(d, dtype=np.int32) for d in docs])
  source = source.to_iter_dataset(grain.ReadOptions(num_threads=0, prefetch_buffer_size=0))
  spec = packing.PackSpec(vocab, seq_len, batch_size, loss_weight_text, loss_weight_image)
  return iter(packing.PackIterDataset(source, spec, drop_remainder=False).map(_batch))
