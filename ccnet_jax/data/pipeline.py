"""Batched, sharded, resumable input pipelines for training and evaluation.

Training uses grain (``grain.python``): an ``IndexSampler`` gives every process a disjoint shard
of the records and an endless, seeded shuffle of it; a ``RandomMapTransform`` receives a
generator derived from (seed, record position), so the augmentation of every example is fixed by
the seed; and the loader's iterator state is a small JSON document (the last index read), so a
restarted run continues at the next batch without replaying the data. Worker processes
(``data.num_workers``) decode and augment off the training thread, one core each (with none, the
training thread does it); each worker assembles whole batches, so the batch sequence is fixed by
the seed *and* the worker count, and a run must resume with the worker count it saved.

Evaluation is one ordered pass and needs none of that: a plain generator with a small thread
pool for decoding, padded so that every process yields the same number of batches.
"""

from __future__ import annotations

import collections
import concurrent.futures
import json
import os
import threading
import time
from typing import Iterator

import grain.python as grain
import jax
import ml_collections
import numpy as np
from absl import flags

from ccnet_jax.data import transforms
from ccnet_jax.data.memory import keep_freed_memory
from ccnet_jax.data.sources import build_source
from ccnet_jax.models.preprocessing import Preprocessing


def _process_layout(process_index: int | None, process_count: int | None) -> tuple[int, int]:
  index = jax.process_index() if process_index is None else int(process_index)
  count = jax.process_count() if process_count is None else int(process_count)
  if count <= 0 or not 0 <= index < count:
    raise ValueError(f"process_index={index} must be in [0, process_count={count}).")
  return index, count


def _exit_when_orphaned(parent_pid: int, period_s: float = 1.0) -> None:
  """Ends this process once ``parent_pid`` is gone (a trainer killed with SIGKILL)."""
  while os.getppid() == parent_pid:
    time.sleep(period_s)
  os._exit(0)  # pylint: disable=protected-access


class _TrainAugment(grain.RandomMapTransform):
  """Applies :func:`transforms.train_transform` with grain's per-record generator.

  grain sends it to each worker process by pickling; unpickled there, it starts a watch
  that ends the worker when the training process dies without closing the loader, and keeps
  the worker's freed buffers for the next example (:func:`keep_freed_memory`).
  """

  def __init__(self, config: ml_collections.ConfigDict):
    self._config = config
    self._parent_pid = os.getpid()

  def __setstate__(self, state: dict) -> None:
    self.__dict__.update(state)
    if os.getppid() == self._parent_pid:  # A worker started by the training process.
      keep_freed_memory()
      threading.Thread(target=_exit_when_orphaned, args=(self._parent_pid,), daemon=True).start()

  def random_map(self, element: dict, rng: np.random.Generator) -> dict:
    return transforms.train_transform(element, self._config, rng)


class TrainLoader:
  """Endless iterator of {'image': uint8 (b, h, w, 3) RGB, 'label': uint8 (b, h, w),
  'image_box': int32 (b, 4)} (see :func:`transforms.train_transform`); the train step
  normalises the images.

  ``get_state()`` returns a JSON-serialisable dict; ``set_state(state)`` on a loader built with
  the same config, seed and process layout makes the next batch the one after the saved point.
  The state of any one process serves them all: a multi-host checkpoint keeps one data
  position (process 0's), and every process reads in lockstep, one batch a step, so each
  re-targets it to its own shard (see :meth:`set_state`).
  """

  def __init__(self, loader: grain.DataLoader, batch_size: int, *, shard_index: int = 0):
    self._loader = loader
    self._iterator = iter(loader)
    self.batch_size = batch_size
    self._shard_index = shard_index

  def __iter__(self) -> "TrainLoader":
    return self

  def __next__(self) -> dict:
    return next(self._iterator)

  def get_state(self) -> dict:
    return dict(
        json.loads(self._iterator.get_state().decode("utf-8")), shard_index=self._shard_index
    )

  def set_state(self, state: dict) -> None:
    """Continues after ``state``, saved by this process or by another one of the same run.

    grain numbers the records a shard has read globally, ``shard_index + k * shard_count``
    for worker ``k``'s position, and names the shard in its sampler; another shard at the
    same position differs only by the shift of its index, and by the sampler it names.
    Where the examples are read from may change between runs (``data.root``,
    ``data.decoded_dir``): grain refuses a state that names another source (by its repr), so
    the state is given this loader's.
    """
    state = dict(state)
    state["data_source"] = repr(self._loader._data_source)  # pylint: disable=protected-access
    shift = self._shard_index - int(state.pop("shard_index", self._shard_index))
    if shift:
      state["last_seen_indices"] = {
          worker: index + shift for worker, index in state["last_seen_indices"].items()
      }
      state["sampler"] = repr(self._loader._sampler)  # pylint: disable=protected-access
    self._iterator.set_state(json.dumps(state, indent=4).encode("utf-8"))


def make_train_loader(
    config: ml_collections.ConfigDict,
    *,
    global_batch_size: int,
    seed: int,
    process_index: int | None = None,
    process_count: int | None = None,
) -> TrainLoader:
  """This process's share (``global_batch_size // process_count``) of every training batch."""
  index, count = _process_layout(process_index, process_count)
  if global_batch_size <= 0 or global_batch_size % count:
    raise ValueError(
        f"global_batch_size={global_batch_size} must be a positive multiple of "
        f"the number of processes ({count})."
    )
  batch_size = global_batch_size // count
  keep_freed_memory()  # For when this process reads the examples (no workers).
  source = build_source(config, config.train_split)
  if len(source) < count * batch_size:
    raise ValueError(
        f"the {config.train_split!r} split of {config.name!r} has {len(source)} "
        f"examples, fewer than one global batch ({global_batch_size})."
    )
  if config.num_workers > 0 and not flags.FLAGS.is_parsed():
    # grain's worker processes read absl flags; outside an absl app they are never parsed.
    flags.FLAGS.mark_as_parsed()
  sampler = grain.IndexSampler(
      num_records=len(source),
      shard_options=grain.ShardOptions(shard_index=index, shard_count=count, drop_remainder=True),
      shuffle=True,
      num_epochs=None,
      seed=int(seed),
  )
  loader = grain.DataLoader(
      data_source=source,
      sampler=sampler,
      operations=[_TrainAugment(config), grain.Batch(batch_size, drop_remainder=True)],
      worker_count=int(config.num_workers),
      worker_buffer_size=max(1, int(config.prefetch)),
      # Each process reads its records itself, one after the other: grain's default of 16
      # reading threads and 500 buffered records per process is made for small remote
      # records; here it would hold ~4 GB of decoded Cityscapes images in every worker and
      # put more threads than cores on the decoding, which is what scales with the workers.
      read_options=grain.ReadOptions(num_threads=0, prefetch_buffer_size=0),
  )
  return TrainLoader(loader, batch_size, shard_index=index)


def eval_shard(
    num_examples: int, process_index: int, process_count: int, batch_size: int
) -> list[int | None]:
  """Indices this process evaluates, padded with None to the same number of full batches."""
  per_process = -(-num_examples // process_count)
  per_process = -(-per_process // batch_size) * batch_size
  start = process_index * per_process
  return [i if i < num_examples else None for i in range(start, start + per_process)]


def make_eval_loader(
    config: ml_collections.ConfigDict,
    *,
    batch_size: int = 1,
    preprocessing: Preprocessing | None = None,
    process_index: int | None = None,
    process_count: int | None = None,
) -> Iterator[dict]:
  """One pass over ``config.eval_split``: {'image', 'label', 'valid': bool (b,), 'name'}.

  Images keep their full size and are normalised with ``preprocessing`` (default: the
  config's; a converted model brings its own). Padding examples (``valid=False``) repeat a real image so that
  every process yields the same number of equally shaped batches; their names are ''.
  """
  index, count = _process_layout(process_index, process_count)
  if batch_size <= 0:
    raise ValueError(f"batch_size={batch_size} must be positive.")
  source = build_source(config, config.eval_split)
  if len(source) == 0:
    raise ValueError(f"the {config.eval_split!r} split of {config.name!r} is empty.")
  preprocessing = preprocessing or Preprocessing.from_config(config)
  keep_freed_memory()
  indices = eval_shard(len(source), index, count, batch_size)
  filler = min(index * len(indices), len(source) - 1)

  def load(i: int | None) -> tuple[dict, bool]:
    example = transforms.eval_transform(source[filler if i is None else i], preprocessing)
    if i is None:
      example["name"] = ""
    return example, i is not None

  def batches() -> Iterator[dict]:
    with concurrent.futures.ThreadPoolExecutor(max(1, int(config.num_workers) or 2)) as pool:
      pending = collections.deque()
      lookahead = max(1, int(config.prefetch)) * batch_size
      position = 0
      while position < len(indices) or pending:
        while position < len(indices) and len(pending) < lookahead:
          pending.append(pool.submit(load, indices[position]))
          position += 1
        group = [pending.popleft().result() for _ in range(batch_size)]
        shapes = {example["image"].shape for example, _ in group}
        if len(shapes) > 1:
          raise ValueError(
              f"eval batch_size={batch_size} needs images of one size, got {sorted(shapes)} "
              f"({', '.join(example['name'] for example, _ in group)}); use batch_size=1."
          )
        yield {
            "image": np.stack([example["image"] for example, _ in group]),
            "label": np.stack([example["label"] for example, _ in group]),
            "valid": np.array([valid for _, valid in group], bool),
            "name": [example["name"] for example, _ in group],
        }

  return batches()
