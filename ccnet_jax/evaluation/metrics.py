"""Confusion matrix and the segmentation metrics derived from it.

The confusion matrix is accumulated on device (jit-friendly, global over a sharded
batch); metrics are computed once on the host from the summed matrix, so that mIoU is
the dataset-level intersection over union, not a mean of per-image scores.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ccnet_jax.data.labels import IGNORE_LABEL


def confusion_matrix(
    predictions: jax.Array,
    labels: jax.Array,
    num_classes: int,
    *,
    ignore_label: int = IGNORE_LABEL,
    valid: jax.Array | None = None,
) -> jax.Array:
  """(K, K) int32 counts, rows = ground truth, columns = prediction.

  Pixels labelled ``ignore_label`` (or any label outside [0, K)) and whole examples
  with ``valid`` False (batch padding) are not counted. ``predictions`` and ``labels``
  are (B, ...) integer arrays of the same shape; ``valid`` is (B,) bool.
  """
  if predictions.shape != labels.shape:
    raise ValueError(
        f"predictions {predictions.shape} and labels {labels.shape} must have the same shape."
    )
  labels = labels.astype(jnp.int32)
  predictions = predictions.astype(jnp.int32)
  counted = (labels != ignore_label) & (labels >= 0) & (labels < num_classes)
  counted &= (predictions >= 0) & (predictions < num_classes)
  if valid is not None:
    valid = jnp.asarray(valid, bool).reshape((labels.shape[0],) + (1,) * (labels.ndim - 1))
    counted &= valid
  index = jnp.where(counted, labels * num_classes + predictions, 0)
  batch = labels.shape[0]
  # One histogram per example, then a sum over the batch: the scatter stays local to
  # each example, so a batch sharded over a mesh (Auto or Explicit axes) needs only
  # the final all-reduce.
  per_example = jax.vmap(
      lambda i, w: jnp.zeros((num_classes * num_classes,), jnp.int32).at[i].add(w)
  )(index.reshape(batch, -1), counted.reshape(batch, -1).astype(jnp.int32))
  counts = per_example.sum(axis=0)
  return counts.reshape(num_classes, num_classes)


def metrics_from_confusion(confusion: np.ndarray) -> dict[str, Any]:
  """mIoU, per-class IoU, pixel and mean accuracy of a (K, K) confusion matrix.

  A class absent from both ground truth and predictions has no IoU (NaN in 'iou') and
  is left out of 'miou'; likewise a class absent from the ground truth is left out of
  'mean_accuracy'. Values are Python floats, so the dict serialises as is.
  """
  confusion = np.asarray(confusion, np.float64)
  if confusion.ndim != 2 or confusion.shape[0] != confusion.shape[1]:
    raise ValueError(f"confusion must be a square (K, K) matrix, got shape {confusion.shape}.")
  true_positives = np.diag(confusion)
  ground_truth = confusion.sum(axis=1)
  predicted = confusion.sum(axis=0)
  union = ground_truth + predicted - true_positives
  with np.errstate(divide="ignore", invalid="ignore"):
    iou = np.where(union > 0, true_positives / union, np.nan)
    accuracy = np.where(ground_truth > 0, true_positives / ground_truth, np.nan)
  total = confusion.sum()
  return {
      "miou": _nanmean(iou),
      "iou": [float(x) for x in iou],
      "pixel_accuracy": float(true_positives.sum() / total) if total > 0 else math.nan,
      "mean_accuracy": _nanmean(accuracy),
      "accuracy": [float(x) for x in accuracy],
      "num_pixels": int(total),
  }


def _nanmean(values: np.ndarray) -> float:
  present = values[~np.isnan(values)]
  return float(present.mean()) if present.size else math.nan


def format_results_table(metrics: dict[str, Any], class_names: Sequence[str]) -> str:
  """A markdown table of per-class IoU (percent), then mIoU and pixel accuracy."""
  iou = metrics["iou"]
  if len(class_names) != len(iou):
    raise ValueError(
        f"{len(class_names)} class names for {len(iou)} classes; pass the dataset's class_names."
    )
  width = max([len("class")] + [len(name) for name in class_names] + [len("pixel accuracy")])
  lines = [f"| {'class':<{width}} | value (%) |", f"|{'-' * (width + 2)}|----------:|"]
  rows = list(zip(class_names, iou)) + [
      ("mIoU", metrics["miou"]),
      ("mean accuracy", metrics["mean_accuracy"]),
      ("pixel accuracy", metrics["pixel_accuracy"]),
  ]
  for name, value in rows:
    text = "n/a" if value is None or math.isnan(value) else f"{100 * value:.2f}"
    lines.append(f"| {name:<{width}} | {text:>9} |")
  return "\n".join(lines)
