"""Two CPU processes under jax.distributed: disjoint data shards, and a checkpoint written and
restored by both that resumes the run with the losses of the uninterrupted one."""

import os
import pickle

import pytest

from tests import distributed_worker as worker
from tests.helpers import ROOT, voc_tree
from tests.processes import HANG_TIMEOUT

# Records of the generated train_aug split, by their constant label (see voc_tree).
TRAIN_RECORDS = {1, 2, 3, 5}


def run_two_processes(phase, tmp_path, **flags):
  """Runs the worker's ``phase`` in two processes of two CPU devices each; their outputs."""
  port = worker.free_port()
  arguments = [
      f"--phase={phase}",
      "--num_processes=2",
      f"--port={port}",
      f"--weights={tmp_path / 'weights.pkl'}",
      f"--data_root={tmp_path / 'data'}",
      f"--checkpoints={tmp_path / 'checkpoints'}",
  ]
  arguments += [f"--{name}={value}" for name, value in flags.items()]
  return worker.run_processes(
      "tests.multi_process_worker",
      [[f"--process_id={i}", *arguments] for i in range(2)],
      repo=ROOT,
      timeout=HANG_TIMEOUT,
  )


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  tmp_path = tmp_path_factory.mktemp("two_processes")
  voc_tree(tmp_path / "data", constant_labels=True)
  (tmp_path / "weights.pkl").write_bytes(pickle.dumps(worker.initial_weights()))
  first = run_two_processes("first", tmp_path, steps=4, save_at=2)
  resumed = run_two_processes("resume", tmp_path, steps=4)
  return first, resumed, tmp_path


def test_each_process_reads_a_disjoint_shard(runs):
  first, _, _ = runs
  assert [o["process_count"] for o in first] == [2, 2]
  # Two records a process per step: one epoch of the four records each step.
  for step in ("1", "2", "3", "4"):
    shards = [set(o["records"][step]) for o in first]
    assert all(len(o["records"][step]) == 2 for o in first)
    assert shards[0].isdisjoint(shards[1]), (step, shards)
    assert shards[0] | shards[1] == TRAIN_RECORDS
  # The shard of a process is the same set every epoch (only its order is reshuffled).
  for output in first:
    assert len({frozenset(r) for r in output["records"].values()}) == 1


def test_checkpoint_saved_and_restored_together_resumes_identically(runs):
  first, resumed, tmp_path = runs
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["2"]
  for before, after in zip(first, resumed):
    # The restored parameters are those saved, and every process restored its own data
    # position: the next batches are the ones the uninterrupted run read.
    assert after["checksum"] == before["checksum"]
    assert after["records"] == {s: r for s, r in before["records"].items() if int(s) > 2}
    # Same compiled program on the same inputs: CPU execution is deterministic, bit for bit.
    assert after["losses"] == {s: l for s, l in before["losses"].items() if int(s) > 2}
  # The loss is global: both processes report the same value.
  assert first[0]["losses"] == first[1]["losses"]


def test_one_saved_data_position_resumes_every_process(tmp_path):
  """A checkpoint keeps process 0's data position; process 1 continues its own shard from it."""
  from ccnet_jax.data.pipeline import make_train_loader
  from tests.multi_process_worker import GLOBAL_BATCH, data_config, records_read

  voc_tree(tmp_path, constant_labels=True)
  config = data_config(str(tmp_path))

  def loader(process):
    return make_train_loader(
        config, global_batch_size=GLOBAL_BATCH, seed=0, process_index=process, process_count=2
    )

  uninterrupted = [loader(0), loader(1)]
  read = [[records_read(next(l)["label"]) for _ in range(3)] for l in uninterrupted]
  saved = loader(0)
  next(saved)
  position = saved.get_state()
  for process in (0, 1):
    resumed = loader(process)
    resumed.set_state(position)
    assert [records_read(next(resumed)["label"]) for _ in range(2)] == read[process][1:]
