"""The Evaluator end to end on an 8-device mesh, against numpy metrics of the official
sliding-window predictions."""

import os

import jax
import numpy as np
import pytest
from jax.sharding import AxisType
from PIL import Image

from ccnet_jax.evaluation.evaluator import Evaluator, local_batch_size, model_predict_fn
from ccnet_jax.evaluation.inference import InferenceSettings
from ccnet_jax.evaluation.png import colorize
from ccnet_jax.models.preprocessing import Preprocessing
from tests.helpers import tiny_ccnet
from tests.torch_reference import official_sliding

PALETTE = np.array(
    [[128, 64, 128], [244, 35, 232], [70, 70, 70], [220, 20, 60], [0, 0, 142]], np.uint8
)
NUM_CLASSES = len(PALETTE)
PREPROCESSING = Preprocessing("bgr", (104.0, 117.0, 123.0), (58.0, 57.0, 57.5))


def _batches(sizes, shape=(33, 41), seed=3, rows=8):
  """Batches of ``rows`` rows (the evaluator's on 8 devices) with ``sizes`` real images."""
  rng = np.random.default_rng(seed)
  batches = []
  for b, size in enumerate(sizes):
    label = rng.integers(0, NUM_CLASSES, size=(rows, *shape)).astype(np.int32)
    label[rng.random(label.shape) < 0.1] = 255
    valid = np.arange(rows) < size
    valid[size - 1] = b != 0  # the first batch ends with a padding example
    batches.append(
        {
            "image": rng.normal(size=(rows, *shape, 3)).astype(np.float32),
            "label": label,
            "valid": valid,
            "name": [f"b{b}_{i}" if i < size else "" for i in range(rows)],
        }
    )
  return batches


def _numpy_metrics(predictions, labels):
  confusion = np.zeros((NUM_CLASSES, NUM_CLASSES), np.int64)
  for p, l in zip(predictions, labels):
    keep = l != 255
    np.add.at(confusion, (l[keep], p[keep]), 1)
  tp = np.diag(confusion).astype(np.float64)
  union = confusion.sum(0) + confusion.sum(1) - tp
  return confusion, np.mean(tp[union > 0] / union[union > 0]), tp.sum() / confusion.sum()


@pytest.mark.parametrize("axis_type", [AxisType.Auto, AxisType.Explicit])
def test_evaluate_ccnet_matches_numpy_on_its_predictions(tmp_path, axis_type):
  predict_fn, state = model_predict_fn(tiny_ccnet(NUM_CLASSES))
  settings = InferenceSettings(mode="sliding", crop_size=(24, 32))
  batches = _batches([5, 3])
  mesh = jax.make_mesh((8,), ("data",), axis_types=(axis_type,))
  evaluator = Evaluator(
      predict_fn, settings=settings, batch_size=8, num_classes=NUM_CLASSES, mesh=mesh
  )
  result = evaluator.evaluate(
      state,
      batches,
      out_dir=str(tmp_path),
      num_images_to_save=3,
      palette=PALETTE,
      preprocessing=PREPROCESSING,
  )
  metrics = result.metrics

  # The expected predictions come from a transcription of the official sliding-window
  # evaluation (numpy tiling, torch upsampling) around the bare network, not predict_logits.
  network = jax.jit(predict_fn)
  predictions, labels = [], []
  for batch in batches:
    for image, label in zip(batch["image"][batch["valid"]], batch["label"][batch["valid"]]):
      logits = official_sliding(image[None], (24, 32), lambda tile: network(state, tile))[0]
      top2 = np.sort(logits, axis=-1)[..., -2:]
      # No near-tie that float32 round-off between the two paths could flip.
      assert (top2[..., 1] - top2[..., 0]).min() > 1e-4
      predictions.append(logits.argmax(-1))
      labels.append(label)
  confusion, miou, pixel_accuracy = _numpy_metrics(predictions, labels)
  np.testing.assert_array_equal(metrics["confusion"], confusion)
  np.testing.assert_allclose(metrics["miou"], miou, rtol=1e-12)
  np.testing.assert_allclose(metrics["pixel_accuracy"], pixel_accuracy, rtol=1e-12)
  saved = sorted(os.listdir(tmp_path))
  kinds = ("gt", "overlay", "pred")
  assert saved == sorted(f"b0_{i}_{kind}.png" for i in range(3) for kind in kinds)
  np.testing.assert_array_equal(
      np.asarray(Image.open(tmp_path / "b0_1_pred.png")), colorize(predictions[1], PALETTE)
  )


def _scaled_inputs(weights, x):
  """A stand-in network: logits that are the input's first channel times ``weights``."""
  return jax.numpy.tile(x[:, ::8, ::8, :1], (1, 1, 1, NUM_CLASSES)) * weights


@pytest.fixture(scope="module")
def evaluator():
  mesh = jax.make_mesh((8,), ("data",), axis_types=(AxisType.Auto,))
  settings = InferenceSettings(mode="whole", scales=(0.75, 1.0), flip=True)
  return Evaluator(
      _scaled_inputs, settings=settings, batch_size=8, num_classes=NUM_CLASSES, mesh=mesh
  )


WEIGHTS = np.arange(NUM_CLASSES, dtype=np.float32) - 2


def test_new_weights_are_evaluated_without_recompiling(evaluator):
  first = evaluator.evaluate(WEIGHTS, _batches([4], shape=(16, 24))).metrics
  second = evaluator.evaluate(-WEIGHTS, _batches([4], shape=(16, 24))).metrics
  assert first["num_pixels"] == second["num_pixels"] > 0
  assert first["confusion"] != second["confusion"]
  assert evaluator._step._cache_size() == 1  # weights are an argument, not a constant


def test_no_batches_is_an_error_naming_the_split(evaluator):
  with pytest.raises(ValueError, match="no batches; check data.eval_split"):
    evaluator.evaluate(WEIGHTS, [])


def test_saving_pngs_needs_the_palette(evaluator):
  batches = _batches([4], shape=(16, 24))
  with pytest.raises(ValueError, match="palette"):
    evaluator.evaluate(WEIGHTS, batches, out_dir="/tmp/unused", num_images_to_save=1)


def test_a_batch_of_another_size_is_refused(evaluator):
  with pytest.raises(ValueError, match=r"expected \(8, h, w, 3\).*valid=False rows"):
    evaluator.evaluate(WEIGHTS, _batches([4], shape=(16, 24), rows=4))


def test_each_process_feeds_its_share_rounded_to_its_devices():
  mesh = jax.make_mesh((8,), ("data",), axis_types=(AxisType.Auto,))
  assert [local_batch_size(n, mesh) for n in (1, 8, 9, 16)] == [8, 8, 16, 16]
  with pytest.raises(ValueError, match="eval.batch_size=0"):
    local_batch_size(0, mesh)
