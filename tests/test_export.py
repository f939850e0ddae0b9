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
from ccnet_jax.export.__main__ import main as export_main
from ccnet_jax.models import model_dir
from ccnet_jax.models.registry import build_model
from tests import numerics
from tests.helpers import run_command
from tests.test_models_model_dir import randomised, tiny_config

PREPROCESSING = {"channel_order": "bgr", "mean": (104.0, 116.7, 122.7), "std": (57.0, 58.0, 59.0)}
# The exports run the same float32 program; only the order of summation (and fused
# multiply-adds) may differ from JAX's. So their logits are compared with the network in
# float64 and allowed FACTOR x the error of JAX's float32 run (tests/numerics.py); measured
# up to 1.4x. A wrong mean, channel order or weight errs by the logits' own scale.
FACTOR = 4
# Two sizes (odd and even, batch 1 and 2) for the exports of any size.
SHAPES = ((1, 33, 41, 3), (2, 40, 24, 3))


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
  """JAX's logits of the normalised images: float32 (the reference) and float64 (the truth).

  The truth normalises by hand in float64 (BGR order, then mean and std), the reference
  with the data pipeline's ``normalize``.
  """
  mean, std = PREPROCESSING["mean"], PREPROCESSING["std"]
  normalised = np.stack([transforms.normalize(image, mean, std, "bgr") for image in rgb])
  reference = np.asarray(_forward(model, normalised))
  with jax.enable_x64(True):
    model64 = model_dir.empty_module(
        lambda: build_model(tiny_config(num_classes=5, dtype="float64"))
    )
    nnx.update(model64, numerics.in_float64(nnx.state(model)))
    model64.eval()
    normalised64 = (np.asarray(rgb, np.float64)[..., ::-1] - mean) / std
    truth = np.asarray(_forward(model64, normalised64))
  return reference, truth


def assert_as_accurate_as_jax(got, model, rgb):
  reference, truth = reference_logits(model, rgb)
  assert np.abs(truth).max() > 1e-3
  numerics.assert_as_accurate_as(got, reference, truth, factor=FACTOR)


def test_stablehlo_any_size_deserialises_and_matches(saved, tmp_path):
  model, directory = saved
  summary = export.export_model(directory, tmp_path, format="stablehlo", batch=None)
  assert summary["input"]["shape"] == ["b", "h", "w", "3"]
  with open(tmp_path / export.STABLEHLO_FILE, "rb") as f:
    exported = jax.export.deserialize(bytearray(f.read()))
  assert "stablehlo" in (tmp_path / export.STABLEHLO_TEXT_FILE).read_text()
  for shape in SHAPES:
    x = images(shape)
    assert_as_accurate_as_jax(np.asarray(exported.call(x)), model, x)


def test_saved_model_runs_in_tensorflow_at_any_size(saved, tmp_path):
  model, directory = saved
  export.export_model(directory, tmp_path, format="saved_model", batch=None)
  serve = tf.saved_model.load(str(tmp_path)).signatures["serving_default"]
  x = images(SHAPES[1], seed=1)
  got = serve(images=tf.constant(x))["logits"].numpy()
  assert_as_accurate_as_jax(got, model, x)
  with open(tmp_path / export.SIGNATURE_FILE) as f:
    signature = json.load(f)
  assert signature["output"]["num_classes"] == 5
  assert signature["preprocessing"]["channel_order"] == "bgr"


def test_tflite_matches_at_its_fixed_size(saved, tmp_path):
  model, directory = saved
  export.export_model(directory, tmp_path, format="tflite", batch=1, height=33, width=41)
  interpreter = tf.lite.Interpreter(model_path=str(tmp_path / export.TFLITE_FILE))
  interpreter.allocate_tensors()
  x = images(SHAPES[0], seed=2)
  interpreter.set_tensor(interpreter.get_input_details()[0]["index"], x)
  interpreter.invoke()
  got = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
  # TFLite (XNNPACK kernels) reorders sums the same way: the same derived bound holds.
  assert_as_accurate_as_jax(got, model, x)


def test_cli_reports_user_errors_in_one_line(saved, tmp_path, capsys):
  model, directory = saved
  model_dir.save_model(tmp_path / "bb", model.backbone, tiny_config(), preprocessing=None)
  cases = (
      ([str(tmp_path / "bb"), str(tmp_path / "a"), "--format=saved_model"], "only a backbone"),
      ([str(directory), str(tmp_path / "b"), "--format=tflite"], "needs a fixed input size"),
      ([str(tmp_path / "none"), str(tmp_path / "c"), "--format=stablehlo"], "model.json"),
  )
  for argv, message in cases:
    assert run_command(export_main, *argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
