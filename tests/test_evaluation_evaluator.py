"""The Evaluator end to end on an 8-device mesh, against numpy metrics of the official
sliding-window predictions."""

import os

import jax
import numpy as np
import pytest
from jax.sharding import AxisType
from PIL import Image

from ccnet_jax.evaluation.config import base_eval_config
from ccnet_jax.evaluation.evaluator import Evaluator, model_predict_fn
from ccnet_jax.evaluation.png import colorize
from ccnet_jax.models.preprocessing import Preprocessing
from tests.test_evaluation_inference import official_sliding, tiny_ccnet

PALETTE = np.array(
    [[128, 64, 128], [244, 35, 232], [70, 70, 70], [220, 20, 60], [0, 0, 142]], np.uint8
)
NUM_CLASSES = len(PALETTE)
PREPROCESSING = Preprocessing("bgr", (104.0, 117.0, 123.0), (58.0, 57.0, 57.5))


def _batches(sizes, shape=(33, 41), seed=3):
  rng = np.random.default_rng(seed)
  batches = []
  for b, size in enumerate(sizes):
    label = rng.integers(0, NUM_CLASSES, size=(size, *shape)).astype(np.int32)
    label[rng.random(label.shape) < 0.1] = 255
    valid = np.ones(size, bool)
    valid[-1] = b != 0  # the first batch ends with a padding example
    batches.append(
        {
            "image": rng.normal(size=(size, *shape, 3)).astype(np.float32),
            "label": label,
            "valid": valid,
            "name": [f"b{b}_{i}" for i in range(size)],
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
  eval_config = base_eval_config()
  eval_config.update(crop_size=(24, 32), batch_size=8, num_images_to_save=3)
  batches = _batches([5, 3])
  mesh = jax.make_mesh((8,), ("data",), axis_types=(axis_type,))
  evaluator = Evaluator(predict_fn, eval_config=eval_config, num_classes=NUM_CLASSES, mesh=mesh)
  metrics = evaluator.evaluate(
      state, batches, out_dir=str(tmp_path), palette=PALETTE, preprocessing=PREPROCESSING
  )

  # The expected predictions come from a transcription of the official sliding-window
  # evaluation (numpy tiling, torch upsampling) around the bare network, not predict_logits.
  network = jax.jit(predict_fn)
  predictions, labels = [], []
  for batch in batches:
    for image, label in zip(batch["image"][batch["valid"]], batch["label"][batch["valid"]]):
      logits = official_sliding(image[None], (24, 32), network=lambda tile: network(state, tile))[0]
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


def test_evaluator_takes_new_weights_without_recompiling_and_rejects_empty_data():
  def predict_fn(weights, x):
    return jax.numpy.tile(x[:, ::8, ::8, :1], (1, 1, 1, NUM_CLASSES)) * weights

  eval_config = base_eval_config()
  eval_config.update(mode="whole", scales=(0.75, 1.0), flip=True, batch_size=8)
  mesh = jax.make_mesh((8,), ("data",), axis_types=(AxisType.Auto,))
  evaluator = Evaluator(predict_fn, eval_config=eval_config, num_classes=NUM_CLASSES, mesh=mesh)
  weights = np.arange(NUM_CLASSES, dtype=np.float32) - 2
  first = evaluator.evaluate(weights, _batches([4], shape=(16, 24)))
  second = evaluator.evaluate(-weights, _batches([4], shape=(16, 24)))
  assert first["num_pixels"] == second["num_pixels"] > 0
  assert first["confusion"] != second["confusion"]
  assert evaluator._step._cache_size() == 1  # weights are an argument, not a constant
  with pytest.raises(ValueError, match="no batches"):
    evaluator.evaluate(weights, [])
  with pytest.raises(ValueError, match="palette"):
    evaluator.evaluate(weights, _batches([4], shape=(16, 24)), out_dir="/tmp/unused")
  eval_config.mode = "tiles"
  with pytest.raises(ValueError, match="eval.mode"):
    Evaluator(predict_fn, eval_config=eval_config, num_classes=NUM_CLASSES, mesh=mesh)
