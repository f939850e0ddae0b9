"""Training and evaluation loaders on the synthetic source: sharding, determinism, resumption."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ccnet_jax.data.config import data_config
from ccnet_jax.data.pipeline import make_eval_loader, make_train_loader
from ccnet_jax.data.sources import build_source
from ccnet_jax.models.preprocessing import Preprocessing


def _config(num_train=16, num_eval=10, size=16):
  config = data_config("synthetic")
  config.synthetic.num_train, config.synthetic.num_eval = num_train, num_eval
  config.synthetic.image_size = (size, size)
  config.crop_size = (size, size)
  return config


def _identify(images: np.ndarray, references: np.ndarray) -> list[int]:
  """Index of the reference image equal to each image."""
  matches = []
  for image in images:
    found = [i for i, ref in enumerate(references) if np.array_equal(image, ref)]
    assert len(found) == 1
    matches.append(found[0])
  return matches


def test_train_batches_shape_and_dtype():
  loader = make_train_loader(
      _config(), global_batch_size=4, seed=0, process_index=0, process_count=2
  )
  batch = next(loader)
  assert batch["image"].shape == (2, 16, 16, 3) and batch["image"].dtype == np.uint8
  assert batch["label"].shape == (2, 16, 16) and batch["label"].dtype == np.uint8
  assert set(np.unique(batch["label"])) <= {0, 1, 2, 3, 4, 5, 255}
  np.testing.assert_array_equal(batch["image_box"], [[0, 0, 16, 16]] * 2)


def test_process_shards_are_disjoint_and_cover_the_data():
  config = _config()
  config.flip = False  # Without flips a training image equals its source image.
  source = build_source(config, config.train_split)
  references = np.stack([source[i]["image"] for i in range(len(source))])
  seen = []
  for process in range(2):
    loader = make_train_loader(
        config, global_batch_size=4, seed=1, process_index=process, process_count=2
    )
    epoch = np.concatenate([next(loader)["image"] for _ in range(4)])  # 8 examples per shard
    indices = _identify(epoch, references)
    assert len(set(indices)) == 8
    seen.append(set(indices))
  assert not seen[0] & seen[1]
  assert seen[0] | seen[1] == set(range(16))


def test_same_seed_same_batches_other_seed_other_batches():
  config = _config()
  first = make_train_loader(config, global_batch_size=4, seed=5, process_count=1, process_index=0)
  second = make_train_loader(config, global_batch_size=4, seed=5, process_count=1, process_index=0)
  other = make_train_loader(config, global_batch_size=4, seed=6, process_count=1, process_index=0)
  for _ in range(6):  # crosses an epoch boundary (16 examples)
    a, b, c = next(first), next(second), next(other)
    np.testing.assert_array_equal(a["image"], b["image"])
    np.testing.assert_array_equal(a["label"], b["label"])
  assert not np.array_equal(a["image"], c["image"])


def test_resume_yields_the_next_batch():
  config = _config()
  loader = make_train_loader(config, global_batch_size=4, seed=2, process_count=1, process_index=0)
  for _ in range(5):
    next(loader)
  state = json.loads(json.dumps(loader.get_state()))
  expected = [next(loader) for _ in range(2)]
  restarted = make_train_loader(
      config, global_batch_size=4, seed=2, process_count=1, process_index=0
  )
  restarted.set_state(state)
  for want in expected:
    got = next(restarted)
    np.testing.assert_array_equal(got["image"], want["image"])
    np.testing.assert_array_equal(got["label"], want["label"])


def test_train_loader_rejects_bad_batch_size():
  with pytest.raises(ValueError, match="global_batch_size"):
    make_train_loader(_config(), global_batch_size=3, seed=0, process_index=0, process_count=2)
  with pytest.raises(ValueError, match="fewer than one global batch"):
    make_train_loader(
        _config(num_train=3), global_batch_size=4, seed=0, process_index=0, process_count=1
    )


@pytest.mark.parametrize("batch_size", [1, 4])
def test_eval_loader_shards_pad_and_cover(batch_size):
  config = _config()
  source = build_source(config, config.eval_split)
  names = [source[i]["name"] for i in range(len(source))]
  per_process = []
  for process in range(3):
    batches = list(
        make_eval_loader(config, batch_size=batch_size, process_index=process, process_count=3)
    )
    per_process.append(batches)
    for batch in batches:
      assert batch["image"].shape == (batch_size, 16, 16, 3)
      assert batch["label"].dtype == np.int32 and batch["valid"].dtype == bool
      for j, name in enumerate(batch["name"]):
        if batch["valid"][j]:
          example = source[names.index(name)]
          np.testing.assert_array_equal(batch["label"][j], example["label"])
          np.testing.assert_allclose(
              batch["image"][j], Preprocessing.from_config(config).normalize(example["image"])
          )
  assert len({len(batches) for batches in per_process}) == 1
  valid_names = [
      name
      for batches in per_process
      for batch in batches
      for name, valid in zip(batch["name"], batch["valid"])
      if valid
  ]
  assert sorted(valid_names) == sorted(names)
  total = sum(len(batch["valid"]) for batches in per_process for batch in batches)
  assert total > len(names)  # 10 examples do not split evenly over 3 processes
