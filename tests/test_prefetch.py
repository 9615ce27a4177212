"""Input prefetch (train/prefetch.py): batches are placed on the devices ahead on a thread, yet the iterator's state
is the one after the batch the caller took, so a resumed pipeline continues exactly where training stopped.

The reference is the bare pipeline (`pipeline.make_dataset`) iterated in the test's own thread.
"""
import functools
import time

import jax
import numpy as np
import pytest

from test_model import load_config
from unimodal_jax.data import pipeline
from unimodal_jax.parallel import mesh as mesh_lib
from unimodal_jax.train import loop, prefetch

BUFFER, TAKEN = 3, 4


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
  c = load_config("tiny")
  c.data.dir = str(tmp_path_factory.mktemp("data"))
  return pipeline.make_dataset(c, loop.data_paths(c, str(tmp_path_factory.mktemp("run")))[0])


def host_batches(dataset, n: int) -> list:
  it = iter(dataset)
  return [next(it) for _ in range(n)]


def assert_same_batch(a, b):
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(a), b)


def wait_until(condition, timeout_s: float = 120):
  deadline = time.monotonic() + timeout_s
  while not condition():
    assert time.monotonic() < deadline, "the prefetch thread did not read ahead"
    time.sleep(0.05)


def test_state_is_that_of_the_consumed_batch_while_the_thread_reads_ahead(dataset):
  mesh = mesh_lib.create_mesh(load_config("tiny").mesh)
  placed = []

  def place(batch):  # runs on the prefetch thread
    placed.append(batch)
    return mesh_lib.global_batch(batch, mesh)

  it = prefetch.device_batches(dataset, place, BUFFER)
  reference = host_batches(dataset, TAKEN + 1)
  for expected in reference[:TAKEN]:
    batch, bad_records = next(it)
    assert isinstance(batch.tokens, jax.Array) and batch.tokens.sharding == mesh_lib.batch_sharding(mesh)
    assert_same_batch(batch, expected)
    assert bad_records == 0
  wait_until(lambda: len(placed) >= TAKEN + BUFFER)  # the thread is BUFFER or more batches ahead
  state = it.get_state()
  it.close()

  resumed = iter(dataset)
  resumed.set_state(state)
  assert_same_batch(next(resumed), reference[TAKEN])


@pytest.mark.parametrize("buffer_size", [0, BUFFER])
def test_the_thread_reads_at_most_the_buffer_ahead(dataset, buffer_size):
  """With prefetch_batches=0 nothing reads ahead (Grain's size-0 buffer is an unbounded queue: a started thread
  placed every batch of the endless stream on the devices until the host ran out of memory). Started as the loop
  starts it, and again as Grain's checkpoint restore does after set_state (where a resumed sweep run leaked)."""
  placed = []
  it = prefetch.device_batches(dataset, lambda batch: placed.append(batch) or batch, buffer_size)
  it.start_prefetch()  # the loop, before compiling
  state = it.get_state()
  it.set_state(state)  # drops what the thread read
  placed.clear()
  it.start_prefetch()  # grain.checkpoint.CheckpointRestore
  for _ in range(TAKEN):
    next(it)
  if buffer_size:
    wait_until(lambda: len(placed) >= TAKEN + buffer_size)
  time.sleep(1.0)  # time enough for an unbounded thread to read hundreds of batches
  assert TAKEN + buffer_size <= len(placed) <= TAKEN + buffer_size + 1  # + the one waiting for a free slot
  it.close()


def test_set_state_drops_the_batches_read_ahead(dataset):
  """What restoring into a running iterator (a checkpoint fallback) relies on."""
  reference = host_batches(dataset, TAKEN + 2)
  it = prefetch.device_batches(dataset, lambda batch: batch, BUFFER)
  next(it)
  state = it.get_state()
  for _ in range(TAKEN):
    next(it)
  it.set_state(state)
  assert_same_batch(next(it)[0], reference[1])
  it.close()


def test_an_error_on_the_thread_is_raised_to_the_caller_at_its_batch(dataset):
  calls = []

  def place(batch):
    calls.append(1)
    if len(calls) == 3:
      raise ValueError("shard-00001.array_record: record 7: token 9999 is outside the vocabulary")
    return batch

  it = prefetch.device_batches(dataset, place, BUFFER)
  next(it), next(it)
  with pytest.raises(ValueError, match="record 7: token 9999"):
    next(it)
  it.close()


@pytest.mark.parametrize("buffer_size", [0, 2])
def test_checkpoints_do_not_depend_on_the_buffer_size(dataset, buffer_size):
  it = prefetch.device_batches(dataset, functools.partial(mesh_lib.global_batch, mesh=mesh_lib.create_mesh(
      load_config("tiny").mesh)), buffer_size)
  next(it)
  bare = iter(dataset)
  next(bare)
  assert it.get_state() == bare.get_state()
  it.close()
