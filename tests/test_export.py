"""Serving exports: the StableHLO artifact, the SavedModel and the TFLite model give JAX's logits.

The reference is the model directory's network run by JAX on images normalised in numpy
(BGR, mean, std): the exports must reproduce the preprocessing and the network.
"""

import json

import jax
import numpy as np
import pytest
import tensorflow as tf

from ccnet_jax import export
from ccnet_jax.export.__main__ import main as export_main
from ccnet_jax.models import model_dir
from tests.export_reference import SHAPES, assert_reproduces_jax, images
from tests.helpers import run_command, tiny_model_config


def _reference(saved_model):
  return saved_model.model, saved_model.config, saved_model.preprocessing


@pytest.mark.numeric
def test_stablehlo_any_size_deserialises_and_matches(saved_model, tmp_path):
  directory = saved_model.directory
  summary = export.export_model(directory, tmp_path, format="stablehlo", batch=None)
  assert summary["input"]["shape"] == ["b", "h", "w", "3"]
  with open(tmp_path / export.STABLEHLO_FILE, "rb") as f:
    exported = jax.export.deserialize(bytearray(f.read()))
  assert "stablehlo" in (tmp_path / export.STABLEHLO_TEXT_FILE).read_text()
  for shape in SHAPES:
    x = images(shape)
    assert_reproduces_jax(np.asarray(exported.call(x)), *_reference(saved_model), x)


@pytest.mark.numeric
def test_saved_model_runs_in_tensorflow_at_any_size(saved_model, tmp_path):
  directory = saved_model.directory
  export.export_model(directory, tmp_path, format="saved_model", batch=None)
  serve = tf.saved_model.load(str(tmp_path)).signatures["serving_default"]
  x = images(SHAPES[1], seed=1)
  got = serve(images=tf.constant(x))["logits"].numpy()
  assert_reproduces_jax(got, *_reference(saved_model), x)
  with open(tmp_path / export.SIGNATURE_FILE) as f:
    signature = json.load(f)
  assert signature["output"]["num_classes"] == 6
  assert signature["preprocessing"]["channel_order"] == "bgr"


@pytest.mark.numeric
def test_tflite_matches_at_its_fixed_size(saved_model, tmp_path):
  directory = saved_model.directory
  export.export_model(directory, tmp_path, format="tflite", batch=1, height=33, width=41)
  interpreter = tf.lite.Interpreter(model_path=str(tmp_path / export.TFLITE_FILE))
  interpreter.allocate_tensors()
  x = images(SHAPES[0], seed=2)
  interpreter.set_tensor(interpreter.get_input_details()[0]["index"], x)
  interpreter.invoke()
  got = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
  assert_reproduces_jax(got, *_reference(saved_model), x)


def test_cli_reports_user_errors_in_one_line(saved_model, tmp_path, capsys):
  model, directory = saved_model.model, saved_model.directory
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
