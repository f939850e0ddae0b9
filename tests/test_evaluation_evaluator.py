"""PNG helpers against the palette, and the Evaluator end to end on an 8-device mesh."""

import os

import jax
import numpy as np
import pytest
from jax.sharding import AxisType
from PIL import Image

from ccnet_jax.evaluation.config import base_eval_config
from ccnet_jax.evaluation.evaluator import Evaluator, model_predict_fn
from ccnet_jax.evaluation.visualize import colorize, denormalize, overlay, save_predictions
from tests.test_evaluation_inference import official_sliding, tiny_ccnet

PALETTE = np.array(
    [[128, 64, 128], [244, 35, 232], [70, 70, 70], [220, 20, 60], [0, 0, 142]], np.uint8
)
NUM_CLASSES = len(PALETTE)
NORMALIZATION = {"mean": (104.0, 117.0, 123.0), "std": (58.0, 57.0, 57.5), "channel_order": "bgr"}


def test_colorize_uses_the_palette_and_blacks_out_ignore():
  labels = np.random.default_rng(0).integers(0, NUM_CLASSES, size=(6, 7))
  labels[0, :3] = 255
  color = colorize(labels, PALETTE)
  assert color.dtype == np.uint8 and color.shape == (6, 7, 3)
  for y in range(6):
    for x in range(7):
      expected = [0, 0, 0] if labels[y, x] == 255 else PALETTE[labels[y, x]]
      np.testing.assert_array_equal(color[y, x], expected)


def test_overlay_and_denormalize():
  rgb = np.random.default_rng(1).integers(0, 256, size=(4, 5, 3)).astype(np.uint8)
  bgr = rgb[..., ::-1].astype(np.float32)
  normalized = (bgr - np.array(NORMALIZATION["mean"])) / np.array(NORMALIZATION["std"])
  np.testing.assert_array_equal(denormalize(normalized, **NORMALIZATION), rgb)
  white = np.full_like(rgb, 255)
  np.testing.assert_array_equal(
      overlay(rgb, white, alpha=0.25), np.round(0.75 * rgb + 0.25 * 255).astype(np.uint8)
  )
  with pytest.raises(ValueError, match="channel_order"):
    denormalize(normalized, (0, 0, 0), (1, 1, 1), "hsv")


def test_save_predictions_writes_readable_pngs(tmp_path):
  rng = np.random.default_rng(2)
  image = rng.integers(0, 256, size=(6, 8, 3)).astype(np.uint8)
  prediction = rng.integers(0, NUM_CLASSES, size=(6, 8))
  label = rng.integers(0, NUM_CLASSES, size=(6, 8))
  paths = save_predictions(str(tmp_path), "city/frame_1", image, prediction, label, PALETTE)
  assert sorted(os.path.basename(p) for p in paths) == [
      "city_frame_1_gt.png",
      "city_frame_1_overlay.png",
      "city_frame_1_pred.png",
  ]
  np.testing.assert_array_equal(
      np.asarray(Image.open(tmp_path / "city_frame_1_pred.png")), colorize(prediction, PALETTE)
  )
  np.testing.assert_array_equal(
      np.asarray(Image.open(tmp_path / "city_frame_1_gt.png")), colorize(label, PALETTE)
  )
  assert np.asarray(Image.open(tmp_path / "city_frame_1_overlay.png")).shape == (6, 8, 3)


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
      state, batches, out_dir=str(tmp_path), palette=PALETTE, normalization=NORMALIZATION
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
