"""Serving exports: the StableHLO artifact, the SavedModel and the TFLite model give JAX's logits.

The reference is the model directory's network run by JAX on images normalised by the data
pipeline's numpy ``normalize``: the exports must reproduce the preprocessing and the network.
"""

import json

import jax
import numpy as np
import pytest
import tensorflow as tf
from flax import nnx

from ccnet_jax import export
from ccnet_jax.data import transforms
from ccnet_jax.export import __main__ as export_cli
from ccnet_jax.models import model_dir
from tests.test_models_model_dir import randomised, tiny_config

PREPROCESSING = {"channel_order": "bgr", "mean": (104.0, 116.7, 122.7), "std": (57.0, 58.0, 59.0)}
# Float32 exports of the same XLA program: only summation order may differ, far below 1e-4.
EXACT_FRACTION = 1e-4


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
  config = tiny_config(num_classes=5)
  model = randomised(config, seed=7)
  directory = tmp_path_factory.mktemp("export") / "model"
  model_dir.save_model(directory, model, config, preprocessing=PREPROCESSING)
  return model, directory


def images(shape, seed=0):
  return np.random.default_rng(seed).uniform(0, 255, shape).astype(np.float32)


@nnx.jit
def _forward(model, x):
  return model(x)[0]


def reference_logits(model, rgb):
  normalised = np.stack([
      transforms.normalize(image, PREPROCESSING["mean"], PREPROCESSING["std"], "bgr")
      for image in rgb
  ])
  return np.asarray(_forward(model, normalised))


def assert_close_to_scale(got, want, fraction):
  assert got.shape == want.shape
  scale = np.abs(want).max()
  assert scale > 1e-3
  np.testing.assert_allclose(got, want, rtol=0, atol=fraction * scale)


def test_stablehlo_any_size_deserialises_and_matches(saved, tmp_path):
  model, directory = saved
  summary = export.export_model(directory, tmp_path, format="stablehlo", batch=None)
  assert summary["input"]["shape"] == ["b", "h", "w", "3"]
  with open(tmp_path / export.STABLEHLO_FILE, "rb") as f:
    exported = jax.export.deserialize(bytearray(f.read()))
  assert "stablehlo" in (tmp_path / export.STABLEHLO_TEXT_FILE).read_text()
  for shape in ((1, 33, 41, 3), (2, 40, 24, 3)):
    x = images(shape)
    assert_close_to_scale(np.asarray(exported.call(x)), reference_logits(model, x),
                          EXACT_FRACTION)


def test_saved_model_runs_in_tensorflow_at_any_size(saved, tmp_path):
  model, directory = saved
  export.export_model(directory, tmp_path, format="saved_model", batch=None)
  serve = tf.saved_model.load(str(tmp_path)).signatures["serving_default"]
  for shape in ((1, 33, 41, 3), (2, 40, 24, 3)):
    x = images(shape, seed=1)
    got = serve(images=tf.constant(x))["logits"].numpy()
    assert_close_to_scale(got, reference_logits(model, x), EXACT_FRACTION)
  with open(tmp_path / export.SIGNATURE_FILE) as f:
    signature = json.load(f)
  assert signature["output"]["num_classes"] == 5
  assert signature["preprocessing"]["channel_order"] == "bgr"
