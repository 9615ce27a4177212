"""Input that never stalls the step: a background thread reads, packs and places batches on the devices
`buffer_size` steps ahead, while the iterator's state stays that of the last batch the loop took.

So a checkpoint saved after step N records the data position after batch N, however far the thread has read.
"""
import grain


class _PlaceIterator(grain.DatasetIterator):
  """On the prefetch thread: the next host batch placed on the devices, with the records skipped up to it."""

  def __init__(self, parent, place):
    super().__init__(parent)
    self._place = place

  def __next__(self):
    batch = next(self._parent)
    return self._place(batch), bad_records(self._parent)

  def get_state(self):
    return self._parent.get_state()

  def set_state(self, state):
    self._parent.set_state(state)


def bad_records(iterator) -> int:
  """The pipeline's running count of skipped records, found through the iterators wrapped around it (a user's
  or a test's `.map` on top of `pipeline.make_dataset`); 0 for a pipeline that does not count them."""
  while iterator is not None:
    if hasattr(iterator, "bad_records"):
      return iterator.bad_records
    iterator = getattr(iterator, "_parent", None)
  return 0


class _Place(grain.IterDataset):
  def __init__(self, parent: grain.IterDataset, place):
    super().__init__(parent)
    self._place = place

  def __iter__(self):
    return _PlaceIterator(self._parent.__iter__(), self._place)


def device_batches(dataset: grain.IterDataset, place, buffer_size: int) -> grain.DatasetIterator:
  """An iterator of (place(batch), bad records so far) over `dataset`, whose iterators count `bad_records`.

  With buffer_size > 0 a thread keeps up to `buffer_size` placed batches ready (Grain's ThreadPrefetchIterDataset
  records the state after each batch it buffers and hands it out with the batch); 0 reads in the caller's thread,
  with no thread at all: Grain's buffer of size 0 is an unbounded queue, and its checkpoint restore starts the
  thread, which then placed the whole endless stream on the devices (~2,500 batches per step) until the host ran
  out of memory. Its get_state/set_state are those of the data pipeline itself, so checkpoints do not depend on
  buffer_size.
  """
  placed = _Place(dataset, place)
  if buffer_size == 0:
    return placed.__iter__()
  return grain.experimental.ThreadPrefetchIterDataset(placed, prefetch_buffer_size=buffer_size).__iter__()

