"""ONNX export: ONNX Runtime (CPU) reproduces the JAX model; the graph is plain, checked ONNX.

The reference is the model directory's network run by JAX (einsum attention, the max-pool as
trained) on images normalised in numpy, held to its float64 truth as in ``test_export.py``
(tests/export_reference.py): the exported graph runs the same float32 arithmetic in another
order (matmuls for the attention's einsums).
"""

import functools
import json
import sys

import jax
import numpy as np
import onnx
import pytest
from flax import nnx
from PIL import Image

from ccnet_jax import export
from ccnet_jax.data.synthetic import SyntheticLongRange
from ccnet_jax.errors import UserError
from ccnet_jax.evaluation.inference import InferenceSettings, predict_logits
from ccnet_jax.export import onnx as onnx_export
from ccnet_jax.export.__main__ import main as export_main
from ccnet_jax.export.onnx_runtime import OnnxModel
from ccnet_jax.models import model_dir
from ccnet_jax.prediction.runtime import RuntimePredictor
from tests import numerics
from tests.export_reference import (
    FACTOR,
    SHAPES,
    assert_reproduces_jax,
    images,
    reference_logits,
    truth_logits,
)
from tests.helpers import PREPROCESSING, randomised, run_command, tiny_model_config
from tests.processes import run_python

# Operators a plain ONNX runtime or TensorRT may lack, or run poorly: Einsum, EyeLike (no
# ONNX Runtime kernel at recent opsets), and anything outside the standard domain.
FORBIDDEN_OPS = {"Einsum", "EyeLike"}


def _network(model):
  graphdef, state = nnx.split(model)
  return lambda x: nnx.merge(graphdef, state)(x)[0]


def _config(recurrence):
  config = tiny_model_config(num_classes=6)  # The synthetic dataset's classes, for predict.py.
  config.head.recurrence = recurrence
  return config


def _assert_reproduces_jax(got, model, rgb):
  assert_reproduces_jax(got, model, _config(model.head.recurrence), PREPROCESSING, rgb)


def _saved(recurrence, root):
  """A small random CCNet with ``recurrence`` criss-cross steps, saved as a model directory."""
  config = _config(recurrence)
  model = randomised(config, seed=7 + recurrence)
  model_dir.save_model(root / "model", model, config, preprocessing=PREPROCESSING)
  return model, root / "model"


@pytest.fixture(scope="module", params=[2, 0], ids=["R2", "R0"])
def exported(request, tmp_path_factory):
  """The model exported with any batch and image size: (model, its directory, the export's)."""
  root = tmp_path_factory.mktemp(f"onnx_r{request.param}")
  model, directory = _saved(request.param, root)
  summary = export.export_model(directory, root / "onnx", format="onnx", batch=None)
  return model, directory, root / "onnx", summary


@pytest.mark.numeric
def test_runtime_reproduces_jax_at_two_sizes_and_batches(exported):
  model, _, onnx_dir, _ = exported
  session = OnnxModel(onnx_dir, provider="cpu")
  for shape in SHAPES:
    x = images(shape)
    _assert_reproduces_jax(session(x), model, x)


def test_graph_is_checked_standard_onnx_with_symbolic_sizes(exported):
  model, _, onnx_dir, summary = exported
  graph = onnx.load(onnx_dir / onnx_export.ONNX_FILE)
  onnx.checker.check_model(graph, full_check=True)
  census = onnx_export.op_census(graph)
  assert not FORBIDDEN_OPS & set(census), census
  assert {node.domain for node in graph.graph.node} <= {""}, "custom operator domains"
  # R=2: two steps of (2 energies + 2 aggregations) matrix products; R=0 has none.
  assert census.get("MatMul", 0) == 4 * model.head.recurrence
  (inputs,), (outputs,) = graph.graph.input, graph.graph.output
  dims = lambda value: [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]
  assert (inputs.name, dims(inputs)) == ("images", ["b", "h", "w", 3])
  assert outputs.name == "logits" and dims(outputs)[0] == "b" and dims(outputs)[3] == 6
  with open(onnx_dir / export.SIGNATURE_FILE) as f:
    signature = json.load(f)
  assert signature["format"] == "onnx" and signature["opset"] == onnx_export.DEFAULT_OPSET
  assert signature["input"]["shape"] == ["b", "h", "w", "3"] == summary["input"]["shape"]
  assert signature["output"]["num_classes"] == 6
  assert graph.opset_import[0].version == onnx_export.DEFAULT_OPSET


@pytest.mark.numeric
@pytest.mark.parametrize("exported", [2], ids=["R2"], indirect=True)
def test_predictions_equal_jax_wherever_the_margin_exceeds_the_tolerance(exported):
  """predict.py's pipeline through ONNX Runtime gives JAX's labels, sliding windows included.

  The exported logits are as accurate as JAX's (the tests above), so a label may differ only
  where JAX's two best classes are about as close as their float32 errors
  (``numerics.decided_pixels``): everywhere else the labels must be equal.
  """
  model, _, onnx_dir, _ = exported
  scenes = SyntheticLongRange(2, (48, 24), seed=1)
  rgb = np.stack([scenes[i]["image"] for i in range(2)])
  normalised = PREPROCESSING.normalize(rgb)
  # JAX's largest float32 error; upsampling and averaging windows (convex combinations) keep
  # the largest error of the logits they combine.
  error = np.abs(
      reference_logits(model, PREPROCESSING, rgb)
      - truth_logits(model, _config(model.head.recurrence), PREPROCESSING, rgb)
  ).max()
  session = OnnxModel(onnx_dir, provider="cpu")
  for settings in (InferenceSettings(), InferenceSettings("sliding", (56, 32))):  # Windows pad.
    logits = jax.jit(
        functools.partial(predict_logits, _network(model), num_classes=6, settings=settings)
    )(normalised)
    decided = numerics.decided_pixels(logits, error, factor=FACTOR)
    assert decided.mean() > 0.9, "the comparison must cover most pixels"
    got = RuntimePredictor(session, settings=settings, dataset="synthetic")(list(rgb))
    np.testing.assert_array_equal(np.stack(got)[decided], np.asarray(logits).argmax(-1)[decided])


@pytest.fixture(scope="module")
def saved_r2(tmp_path_factory):
  return _saved(2, tmp_path_factory.mktemp("onnx_cli"))


@pytest.mark.numeric
def test_fixed_size_export_from_the_command_line(saved_r2, tmp_path):
  model, directory = saved_r2
  out = tmp_path / "fixed"
  flags = ("--format=onnx", "--batch=2", "--height=40", "--width=24", "--opset=18")
  assert run_command(export_main, directory, out, *flags) == 0
  graph = onnx.load(out / onnx_export.ONNX_FILE)
  assert [d.dim_value for d in graph.graph.input[0].type.tensor_type.shape.dim] == [2, 40, 24, 3]
  assert graph.opset_import[0].version == 18
  x = images(SHAPES[1], seed=3)
  _assert_reproduces_jax(OnnxModel(out)(x), model, x)


def test_missing_packages_and_providers_are_one_line_errors(
    saved_r2, tmp_path, monkeypatch, capsys
):
  _, directory = saved_r2
  monkeypatch.setitem(sys.modules, "jax2onnx", None)  # As on a machine without it.
  assert run_command(export_main, directory, tmp_path / "x", "--format=onnx") == 1
  assert capsys.readouterr().err.strip().splitlines() == [
      f"error: ONNX needs jax2onnx, which is not installed: run {onnx_export.INSTALL_COMMAND}"
      " (from the repository root)."
  ]
  assert not (tmp_path / "x").exists()
  non_local = tiny_model_config()
  non_local.head.update(attention="non_local", recurrence=1)
  with pytest.raises(UserError, match=r"non-local head needs --height and --width"):
    onnx_export.check_symbolic_sizes(non_local, height=None, width=24)
  onnx_export.check_symbolic_sizes(non_local, height=40, width=24)
  onnx_export.check_symbolic_sizes(tiny_model_config(), height=None, width=None)
  (tmp_path / "folder").mkdir()
  (tmp_path / "folder" / onnx_export.ONNX_FILE).write_bytes(b"")
  (tmp_path / "folder" / export.SIGNATURE_FILE).write_text('{"format": "onnx"}')
  with pytest.raises(UserError, match=r"serving.json is not an export's"):
    OnnxModel(tmp_path / "folder")
  signature = {
      "format": "onnx",
      "output": {"num_classes": 6},
      "preprocessing": PREPROCESSING.to_json(),
  }
  (tmp_path / "folder" / export.SIGNATURE_FILE).write_text(json.dumps(signature))
  with pytest.raises(UserError, match=r"--provider=tpu is not one of"):
    OnnxModel(tmp_path / "folder", provider="tpu")
  with pytest.raises(UserError, match=r"cannot be loaded by ONNX Runtime"):
    OnnxModel(tmp_path / "folder", provider="cpu")


@pytest.mark.parametrize("exported", [2], ids=["R2"], indirect=True)
def test_predict_py_runs_an_export_on_onnx_runtime(exported, tmp_path):
  _, _, onnx_dir, _ = exported
  Image.fromarray(SyntheticLongRange(1, (48, 24), seed=2)[0]["image"]).save(tmp_path / "a.png")
  result = run_python(
      "predict.py", f"--model={onnx_dir}", tmp_path / "a.png", f"--out={tmp_path / 'out'}",
      "--provider=cpu", "--dataset=synthetic", "--noprogress",
  )  # fmt: skip
  assert result.returncode == 0, result.stderr
  assert f"Model: ONNX export {onnx_dir} on ONNX Runtime (cpu)" in result.stdout
  labels = np.asarray(Image.open(tmp_path / "out" / "a_pred.png"))
  assert labels.shape[:2] == (48, 24)
