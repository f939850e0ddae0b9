"""Prediction within memory: batches padded to powers of two only, programs checked against the
device's free memory before they run (a small fake budget stands for a small device).

The references: the labels of a predictor with batch 1 (padding must not change a label), and
of a predictor set to sliding windows (what a switch to them must give).
"""

import numpy as np
import pytest

from ccnet_jax.errors import UserError
from ccnet_jax.evaluation.inference import InferenceSettings
from ccnet_jax.loading import load_model
from ccnet_jax.models import model_dir
from ccnet_jax.prediction import memory
from ccnet_jax.prediction.predictor import Predictor, bucket_size
from tests.helpers import randomised, tiny_model_config

SIZE = (96, 64)
CROP = (32, 32)


@pytest.fixture(scope="module")
def loaded(saved_model, tmp_path_factory):
  """The saved model, widened so that its activations, not the image and the logits, take most
  of a whole-image program's memory (as in a real network): 32x32 windows then need less."""
  config = tiny_model_config(num_classes=saved_model.config.num_classes)
  config.backbone.base_width = 32
  config.head.update(channels=64, out_channels=64)
  directory = tmp_path_factory.mktemp("wide") / "model"
  model_dir.save_model(
      directory, randomised(config, seed=3), config, preprocessing=saved_model.preprocessing
  )
  return load_model(directory)


def images(count, size=SIZE, seed=0):
  rng = np.random.default_rng(seed)
  return [rng.integers(0, 256, size + (3,), dtype=np.uint8) for _ in range(count)]


def test_buckets_are_powers_of_two_up_to_the_batch_size():
  assert [bucket_size(n, 1000) for n in (1, 2, 3, 4, 5, 9, 1000)] == [1, 2, 4, 4, 8, 16, 1000]
  assert [bucket_size(n, 6) for n in range(1, 7)] == [1, 2, 4, 4, 6, 6]
  for batch_size in range(1, 40):
    for count in range(1, batch_size + 1):
      bucket = bucket_size(count, batch_size)
      assert count <= bucket <= min(2 * count - 1, batch_size)


def test_a_batch_is_never_padded_past_the_images_it_holds(loaded):
  """One image at --batch_size=1000 runs a program of batch 1; three, a program of batch 4."""
  predictor = Predictor(loaded, batch_size=1000)
  one = predictor(images(1))
  assert list(predictor.compiled) == [(1, *SIZE, 3)]
  three = predictor(images(3, seed=1))
  assert list(predictor.compiled) == [(1, *SIZE, 3), (4, *SIZE, 3)]
  single = Predictor(loaded, batch_size=1)
  for got, image in zip(one + three, images(1) + images(3, seed=1)):
    np.testing.assert_array_equal(got, single([image])[0])


def program_bytes(loaded, settings, batch=1):
  predictor = Predictor(loaded, settings=settings)
  return predictor._compile((batch, *SIZE, 3), settings)[1]  # pylint: disable=protected-access


def test_whole_image_inference_over_the_budget_switches_to_sliding_windows_in_one_line(loaded):
  whole = InferenceSettings(mode="whole", crop_size=CROP)
  sliding = InferenceSettings(mode="sliding", crop_size=CROP)
  needs_whole, needs_sliding = program_bytes(loaded, whole), program_bytes(loaded, sliding)
  assert needs_sliding < needs_whole  # Windows smaller than the image take less memory.
  budget = (needs_whole + needs_sliding) // 2  # Room for the windows, not the whole image.
  lines = []
  predictor = Predictor(loaded, settings=whole, memory_budget=budget, report=lines.append)
  got = predictor(images(2))
  assert predictor.compiled == {(1, *SIZE, 3): "sliding"}
  assert len(lines) == 1 and lines[0].startswith("note: whole-image inference of 96x64 images")
  assert "sliding windows of 32x32 (--mode=sliding" in lines[0], lines
  want = Predictor(loaded, settings=sliding)(images(2))
  for a, b in zip(got, want):
    np.testing.assert_array_equal(a, b)


def test_what_fits_in_no_mode_stops_with_one_line_naming_the_flag(loaded):
  whole = InferenceSettings(mode="whole", crop_size=CROP)
  budget = program_bytes(loaded, InferenceSettings(mode="sliding", crop_size=CROP)) // 2
  kept_whole = Predictor(loaded, settings=whole, memory_budget=budget, fallback_to_sliding=False)
  with pytest.raises(
      UserError, match=r"needs .*, more than the .* free on cpu; run with --mode=sliding"
  ):
    kept_whole(images(1))
  for settings in (whole, InferenceSettings(mode="sliding", crop_size=CROP)):
    with pytest.raises(UserError, match=r"32x32 windows needs .*; use a smaller --crop_size\.$"):
      Predictor(loaded, settings=settings, memory_budget=budget)(images(1))
  assert kept_whole.compiled == {}


def test_the_free_memory_of_this_host_is_known():
  free = memory.free_bytes(__import__("jax").devices()[0])
  assert free is not None and 0 < free < 1 << 50
