"""Splits stored decoded (ArrayRecord): the loaders read from them what they read from the folders."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from PIL import Image

from ccnet_jax.data import decoded
from ccnet_jax.data.__main__ import convert_splits
from ccnet_jax.data.config import data_config
from ccnet_jax.data.pipeline import make_eval_loader, make_train_loader
from ccnet_jax.data.sources import build_source
from tests import processes

# (split, stem, height, width): two sizes, so the records' shapes are read, not assumed.
_PAIRS = (
    ("train", "aachen_000000_000019", 24, 40),
    ("train", "aachen_000001_000019", 20, 36),
    ("train", "bochum_000000_000019", 24, 40),
    ("train", "bochum_000001_000019", 22, 30),
    ("train", "bochum_000002_000019", 24, 40),
    ("val", "lindau_000000_000019", 24, 40),
    ("val", "lindau_000001_000019", 20, 36),
    ("val", "lindau_000002_000019", 24, 40),
)


def _cityscapes_tree(root) -> None:
  rng = np.random.default_rng(0)
  for split, stem, height, width in _PAIRS:
    city = stem.split("_")[0]
    for folder in ("leftImg8bit", "gtFine"):
      os.makedirs(root / folder / split / city, exist_ok=True)
    image = rng.integers(0, 256, (height, width, 3), np.uint8)
    label_ids = rng.integers(0, 34, (height, width), np.uint8)
    Image.fromarray(image).save(root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png")
    Image.fromarray(label_ids).save(root / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png")


@pytest.fixture(scope="module", name="configs")
def _configs(tmp_path_factory):
  """The Cityscapes recipe on a tiny tree, read from the folders and from its decoded files."""
  root = tmp_path_factory.mktemp("cityscapes")
  _cityscapes_tree(root)
  folders = data_config("cityscapes")
  folders.root, folders.crop_size = str(root), (16, 16)
  written = convert_splits(folders, ["train", "val"], str(root / "decoded"))
  assert {split: entry["examples"] for split, entry in written.items()} == {"train": 5, "val": 3}
  stored = folders.copy_and_resolve_references()
  stored.decoded_dir = str(root / "decoded")
  return folders, stored


def _train_loader(config, seed=3, batch=2):
  return make_train_loader(
      config, global_batch_size=batch, seed=seed, process_index=0, process_count=1
  )


def _assert_same_batches(first: dict, second: dict) -> None:
  assert first.keys() == second.keys()
  for key in first:
    np.testing.assert_array_equal(first[key], second[key], err_msg=key)


def test_decoded_examples_are_the_folders_examples(configs):
  folders, stored = configs
  for split in ("train", "val"):
    expected, actual = build_source(folders, split), build_source(stored, split)
    assert isinstance(actual, decoded.DecodedSplit) and len(actual) == len(expected)
    for index in range(len(expected)):
      want, got = expected[index], actual[index]
      assert got["name"] == want["name"]
      assert got["image"].dtype == np.uint8 and got["label"].dtype == np.uint8
      np.testing.assert_array_equal(got["image"], want["image"])
      np.testing.assert_array_equal(got["label"], want["label"])


def test_train_loader_same_batches_and_resume_position(configs):
  """Same crops, labels and boxes for the same seed (scale, crop and flip draws included),
  across epochs; a position saved on either source resumes on the other at the same batch."""
  folders, stored = configs
  from_folders, from_records = _train_loader(folders), _train_loader(stored)
  for _ in range(4):  # 8 examples: past the end of the 5-example epoch
    _assert_same_batches(next(from_folders), next(from_records))
  state = json.loads(json.dumps(from_folders.get_state()))
  described = {"data_source"}  # grain records the source's repr, and does not read it back
  records_state = from_records.get_state()
  assert {k: v for k, v in state.items() if k not in described} == {
      k: v for k, v in records_state.items() if k not in described
  }
  expected = [next(from_folders) for _ in range(2)]
  for resumed_config in (stored, folders):
    resumed = _train_loader(resumed_config)
    resumed.set_state(state)
    for batch in expected:
      _assert_same_batches(batch, next(resumed))


def test_train_loader_in_a_worker_process(configs):
  """The decoded source pickles to a grain worker, which reads the same examples."""
  folders, stored = configs
  stored = stored.copy_and_resolve_references()
  stored.num_workers = 1
  reference = _train_loader(folders)
  loader = _train_loader(stored)
  for _ in range(3):
    _assert_same_batches(next(reference), next(loader))


def test_eval_loader_same_batches(configs):
  folders, stored = configs
  expected, actual = list(make_eval_loader(folders)), list(make_eval_loader(stored))
  assert len(actual) == len(expected) == 3
  for want, got in zip(expected, actual):
    assert got["name"] == want["name"]
    _assert_same_batches(
        {k: v for k, v in want.items() if k != "name"},
        {k: v for k, v in got.items() if k != "name"},
    )


def test_missing_split_names_the_field(configs, tmp_path):
  _, stored = configs
  stored = stored.copy_and_resolve_references()
  stored.decoded_dir = str(tmp_path)
  with pytest.raises(FileNotFoundError, match=r"^data\.decoded_dir=.* has no cityscapes-train"):
    build_source(stored, "train")


def test_a_truncated_file_is_refused_by_name(configs, tmp_path):
  _, stored = configs
  whole = decoded.split_file(stored.decoded_dir, "cityscapes", "train")
  with open(whole, "rb") as f:
    data = f.read()
  truncated = tmp_path / "cityscapes-train.array_record"
  truncated.write_bytes(data[: len(data) // 2])
  with pytest.raises(ValueError, match=f"^{truncated} is not a whole split file"):
    decoded.DecodedSplit(str(truncated))


class _Failing:
  """A source whose third example cannot be read."""

  def __len__(self):
    return 4

  def __getitem__(self, index):
    if index == 2:
      raise ValueError("cannot decode image broken.png")
    return {
        "image": np.full((2, 3, 3), index, np.uint8),
        "label": np.zeros((2, 3), np.uint8),
        "name": f"n{index}",
    }


def test_written_whole_or_not_at_all(tmp_path):
  path = str(tmp_path / "set-train.array_record")
  with pytest.raises(ValueError, match="broken.png"):
    decoded.write_split(_Failing(), path)
  assert os.listdir(tmp_path) == []
  decoded.write_split([_Failing()[0], _Failing()[1]], path)
  with pytest.raises(ValueError, match="broken.png"):
    decoded.write_split(_Failing(), path)  # a failed rewrite keeps the complete file
  assert os.listdir(tmp_path) == [os.path.basename(path)]
  written = decoded.DecodedSplit(path)
  assert [written[i]["name"] for i in range(len(written))] == ["n0", "n1"]


def test_a_missing_split_stops_the_conversion_before_anything_is_written(configs, tmp_path):
  config = configs[0].copy_and_resolve_references()
  config.eval_split = "test"
  with pytest.raises(FileNotFoundError, match="Cityscapes 'test' not found"):
    convert_splits(config, ["train", "test"], str(tmp_path / "out"))
  assert not os.path.exists(tmp_path / "out")


def test_command_writes_the_splits(configs, tmp_path):
  folders, _ = configs
  done = processes.run_python(
      "-m",
      "ccnet_jax.data",
      "--config=configs/cityscapes.py",
      f"--config.data.root={folders.root}",
      tmp_path / "out",
  )
  assert done.returncode == 0, done.stderr
  summary = json.loads(done.stdout[done.stdout.index("{") :])
  assert {split: entry["examples"] for split, entry in summary.items()} == {"train": 5, "val": 3}
  assert sorted(os.listdir(tmp_path / "out")) == [
      "cityscapes-train.array_record",
      "cityscapes-val.array_record",
  ]
