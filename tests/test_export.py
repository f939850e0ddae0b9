"""Serving exports: the StableHLO artifact, the SavedModel and the TFLite model give JAX's logits.

The reference is the model directory's network run by JAX on images normalised in numpy
(BGR, mean, std): the exports must reproduce the preprocessing and the network.
"""

import json

import jax
import numpy as np
import pytest
import tensorflow as tf
from flax import nnx

from ccnet_jax import export
from ccnet_jax.export.__main__ import main as export_main
from ccnet_jax.models import model_dir
from ccnet_jax.models.preprocessing import Preprocessing
from tests.helpers import randomised, run_command, tiny_model_config

PREPROCESSING = Preprocessing("bgr", (104.0, 116.7, 122.7), (57.0, 58.0, 59.0))
# The exports run the same float32 program; only the order of summation (and fused
# multiply-adds) may differ from JAX's. A dot product of K terms then differs by about
# sqrt(K) * 2^-24 relative: K <= 9 * 80 here gives 2e-6 per layer, and ~20 layers in sequence,
# their errors adding in quadrature, about 1e-5 of the logits' scale. 1e-4 leaves a margin of
# 10 and still fails on any real difference (a wrong mean, channel order or weight).
EXACT_FRACTION = 1e-4
# Two sizes (odd and even, batch 1 and 2) for the exports of any size.
SHAPES = ((1, 33, 41, 3), (2, 40, 24, 3))


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
  config = tiny_model_config(num_classes=5)
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
  bgr = np.asarray(rgb, np.float32)[..., ::-1]
  mean, std = np.float32(PREPROCESSING.mean), np.float32(PREPROCESSING.std)
  return np.asarray(_forward(model, (bgr - mean) / std))


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
  for shape in SHAPES:
    x = images(shape)
    assert_close_to_scale(np.asarray(exported.call(x)), reference_logits(model, x), EXACT_FRACTION)


def test_saved_model_runs_in_tensorflow_at_any_size(saved, tmp_path):
  model, directory = saved
  export.export_model(directory, tmp_path, format="saved_model", batch=None)
  serve = tf.saved_model.load(str(tmp_path)).signatures["serving_default"]
  x = images(SHAPES[1], seed=1)
  got = serve(images=tf.constant(x))["logits"].numpy()
  assert_close_to_scale(got, reference_logits(model, x), EXACT_FRACTION)
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
  want = reference_logits(model, x)
  # TFLite (XNNPACK kernels) reorders sums the same way: the same derived bound holds.
  assert_close_to_scale(got, want, EXACT_FRACTION)


def test_cli_reports_user_errors_in_one_line(saved, tmp_path, capsys):
  model, directory = saved
  model_dir.save_model(tmp_path / "bb", model.backbone, tiny_model_config(), preprocessing=None)
  cases = (
      ([str(tmp_path / "bb"), str(tmp_path / "a"), "--format=saved_model"], "only a backbone"),
      ([str(directory), str(tmp_path / "b"), "--format=tflite"], "needs a fixed input size"),
      ([str(tmp_path / "none"), str(tmp_path / "c"), "--format=stablehlo"], "no such directory"),
  )
  for argv, message in cases:
    assert run_command(export_main, *argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
