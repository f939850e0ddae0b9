"""Confusion matrix and mIoU against direct numpy counting, also on an 8-device mesh."""

import math

import chex
import jax
import numpy as np
import pytest
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

from ccnet_jax.evaluation.metrics import (
    confusion_matrix,
    format_results_table,
    metrics_from_confusion,
)

NUM_CLASSES = 6


def _random_maps(seed, batch=8, shape=(9, 11)):
  rng = np.random.default_rng(seed)
  # Class 5 never occurs in either map: its IoU must be NaN and leave the mean alone.
  labels = rng.integers(0, NUM_CLASSES - 1, size=(batch, *shape)).astype(np.int32)
  labels[rng.random(labels.shape) < 0.2] = 255
  predictions = rng.integers(0, NUM_CLASSES - 1, size=(batch, *shape)).astype(np.int32)
  # Class 4 is predicted but never labelled: IoU 0, counted in the mean.
  labels[labels == 4] = 3
  valid = np.ones(batch, bool)
  valid[[2, 5]] = False
  return predictions, labels, valid


def _numpy_confusion(predictions, labels, valid):
  expected = np.zeros((NUM_CLASSES, NUM_CLASSES), np.int64)
  for b in range(labels.shape[0]):
    if not valid[b]:
      continue
    for truth, predicted in zip(labels[b].ravel(), predictions[b].ravel()):
      if truth != 255:
        expected[truth, predicted] += 1
  return expected


def test_confusion_matrix_matches_numpy_loop():
  predictions, labels, valid = _random_maps(0)
  actual = jax.jit(confusion_matrix, static_argnums=2)(
      predictions, labels, NUM_CLASSES, valid=valid
  )
  chex.assert_type(actual, np.int32)
  np.testing.assert_array_equal(actual, _numpy_confusion(predictions, labels, valid))


def test_confusion_matrix_without_valid_counts_every_example():
  predictions, labels, valid = _random_maps(1)
  actual = confusion_matrix(predictions, labels, NUM_CLASSES)
  np.testing.assert_array_equal(actual, _numpy_confusion(predictions, labels, np.ones_like(valid)))


@pytest.mark.parametrize("axis_type", [AxisType.Explicit, AxisType.Auto])
def test_confusion_matrix_is_global_on_a_sharded_batch(axis_type):
  mesh = jax.make_mesh((8,), ("data",), axis_types=(axis_type,))
  predictions, labels, valid = _random_maps(2)
  sharding = NamedSharding(mesh, P("data"))
  args = [jax.device_put(x, sharding) for x in (predictions, labels, valid)]
  actual = jax.jit(
      lambda p, l, v: confusion_matrix(p, l, NUM_CLASSES, valid=v),
      out_shardings=NamedSharding(mesh, P()),
  )(*args)
  assert len(args[0].sharding.device_set) == 8
  np.testing.assert_array_equal(actual, _numpy_confusion(predictions, labels, valid))


def test_metrics_match_per_class_pixel_sets():
  predictions, labels, valid = _random_maps(3)
  metrics = metrics_from_confusion(
      np.asarray(confusion_matrix(predictions, labels, NUM_CLASSES, valid=valid))
  )
  counted = (labels != 255) & valid[:, None, None]
  truth, predicted = labels[counted], predictions[counted]
  ious, accuracies = [], []
  for c in range(NUM_CLASSES):
    union = np.sum((truth == c) | (predicted == c))
    intersection = np.sum((truth == c) & (predicted == c))
    ious.append(intersection / union if union else math.nan)
    if np.sum(truth == c):
      accuracies.append(intersection / np.sum(truth == c))
  assert math.isnan(metrics["iou"][5]) and metrics["iou"][4] == 0.0
  np.testing.assert_allclose(metrics["iou"], ious, rtol=1e-12)
  np.testing.assert_allclose(metrics["miou"], np.mean(ious[:5]), rtol=1e-12)
  np.testing.assert_allclose(metrics["pixel_accuracy"], np.mean(truth == predicted), rtol=1e-12)
  np.testing.assert_allclose(metrics["mean_accuracy"], np.mean(accuracies), rtol=1e-12)
  assert metrics["num_pixels"] == truth.size


def test_results_table_lists_every_class_and_the_means():
  metrics = metrics_from_confusion(np.array([[3, 1, 0], [1, 5, 0], [0, 0, 0]]))
  table = format_results_table(metrics, ["road", "car", "train"])
  lines = table.splitlines()
  assert "road" in lines[2] and "60.00" in lines[2]  # 3 / (4 + 4 - 3)
  assert "car" in lines[3] and "71.43" in lines[3]  # 5 / (6 + 6 - 5)
  assert "train" in lines[4] and "n/a" in lines[4]
  assert "mIoU" in lines[5] and "65.71" in lines[5]
  assert "pixel accuracy" in lines[7] and "80.00" in lines[7]
  with pytest.raises(ValueError, match="class_names"):
    format_results_table(metrics, ["road"])


def test_bad_shapes_are_reported():
  with pytest.raises(ValueError, match="same shape"):
    confusion_matrix(np.zeros((2, 3, 3), np.int32), np.zeros((2, 3, 4), np.int32), 3)
  with pytest.raises(ValueError, match="square"):
    metrics_from_confusion(np.zeros((3, 4)))


def test_iou_matches_cityscapes_scripts():
  cs_eval = pytest.importorskip("cityscapesscripts.evaluation.evalPixelLevelSemanticLabeling")
  from cityscapesscripts.helpers.labels import trainId2label

  rng = np.random.default_rng(4)
  labels = rng.integers(0, 19, size=(2, 16, 24)).astype(np.int32)
  labels[rng.random(labels.shape) < 0.15] = 255
  labels[labels == 16] = 15  # 'train' never in the ground truth
  predictions = rng.integers(0, 19, size=labels.shape).astype(np.int32)
  predictions[predictions == 16] = 14  # nor predicted: NaN in both
  metrics = metrics_from_confusion(np.asarray(confusion_matrix(predictions, labels, 19)))

  # cityscapesscripts works on label ids; ignored ground truth is 'unlabeled' (id 0).
  to_id = np.array([trainId2label[t].id for t in range(19)] + [0] * 237)
  cs_matrix = cs_eval.generateMatrix(cs_eval.args)
  np.add.at(cs_matrix, (to_id[labels].ravel(), to_id[predictions].ravel()), 1)
  expected = {
      t: cs_eval.getIouScoreForLabel(trainId2label[t].id, cs_matrix, cs_eval.args)
      for t in range(19)
  }
  np.testing.assert_allclose(metrics["iou"], [expected[t] for t in range(19)], rtol=1e-12)
  np.testing.assert_allclose(
      metrics["miou"], cs_eval.getScoreAverage(expected, cs_eval.args), rtol=1e-12
  )
  assert math.isnan(metrics["iou"][16]) and 0 < metrics["miou"] < 1
