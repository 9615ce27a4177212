"""The training input pipeline: ArrayRecord shards -> this process's records -> shuffle -> PackedBatch.

`make_dataset` and `pack_documents` share the stages of `packing.pack`; they differ only in the source.
Batches are numpy and per process; placing them on devices is `unimodal_jax/parallel`'s job.
"""
from collections.abc import Iterator, Sequence

import grain
import numpy as np
from absl import flags

from unimodal_jax.data import batch as batch_lib
from unimodal_jax.data import documents
from unimodal_jax.data import packing
from unimodal_jax.data import vocab as vocab_lib


def _tokens(doc: documents.Document) -> np.ndarray:
  return doc.tokens


def process_batch_size(config, process_count: int) -> int:
  """Rows per process: train.batch_size split evenly over processes."""
  if config.train.batch_size % process_count:
    raise ValueError(f"train.batch_size={config.train.batch_size} is not divisible by the {process_count} processes")
  return config.train.batch_size // process_count


def make_dataset(config, paths: Sequence[str], *, process_index: int = 0, process_count: int = 1) -> grain.IterDataset:
  """Endless PackedBatches of [train.batch_size // process_count, data.seq_len] for one process.

  Process i reads records i, i + process_count, ... (disjoint shares). The stream is a function of
  `config.seed` and `data.worker_count` (each worker packs its own slice of the record stream), and
  iterators resume exactly with get_state/set_state.
  """
  batch_size = process_batch_size(config, process_count)
  ds = documents.read_documents(paths)[process_index::process_count]
  if len(ds) == 0:
    raise ValueError(f"process {process_index} of {process_count} gets no records from {list(paths)}")
  ds = ds.seed(config.seed)
  if config.data.shuffle:
    ds = ds.shuffle()
  # Not grain's default of 16 threads and 500 buffered records: it rescans that buffer for every record,
  # which costs ~2x the throughput on local disk.
  threads = config.data.read_threads
  read_options = grain.ReadOptions(num_threads=threads, prefetch_buffer_size=8 * threads)
  ds = ds.repeat().map(_tokens).to_iter_dataset(read_options)
  ds = packing.pack(ds, vocab=vocab_lib.from_config(config), seq_len=config.data.seq_len, batch_size=batch_size,
                    loss_weight_text=config.data.loss_weight_text, loss_weight_image=config.data.loss_weight_image)
  if config.data.worker_count > 0:
    if not flags.FLAGS.is_parsed():  # grain's worker processes read absl flags
      flags.FLAGS.mark_as_parsed()
    ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=config.data.worker_count))
  return ds


def pack_documents(docs: Sequence[np.ndarray], vocab: vocab_lib.Vocab, seq_len: int, batch_size: int, *,
                   loss_weight_text: float = 1.0, loss_weight_image: float = 1.0) -> Iterator[batch_lib.PackedBatch]:
  """In-memory documents, in order, through the same stages as `make_dataset`; one pass, no shuffle.

  The last batch may have fewer than `batch_size` rows.
  """
  source = grain.MapDataset.source([np.asarray(d, dtype=np.int32) for d in docs])
  source = source.to_iter_dataset(grain.ReadOptions(num_threads=0, prefetch_buffer_size=0))
  ds = packing.pack(source, vocab=vocab, seq_len=seq_len, batch_size=batch_size, loss_weight_text=loss_weight_text,
                    loss_weight_image=loss_weight_image, drop_remainder=False)
  return iter(ds)
