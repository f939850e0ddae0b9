"""A loaded model with fixed inference settings: uint8 RGB images in, train ids out.

Inference is evaluation's (:func:`ccnet_jax.evaluation.inference.predict_logits`): whole
image or sliding windows, optionally several scales and flips, on images of any size; the
model's own :class:`~ccnet_jax.models.preprocessing.Preprocessing` turns the images into its
input.
"""

from __future__ import annotations

import functools
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ccnet_jax.data.labels import dataset_for_model
from ccnet_jax.evaluation.evaluator import model_predict_fn
from ccnet_jax.evaluation.inference import InferenceSettings, predict_logits
from ccnet_jax.loading import LoadedModel
from ccnet_jax.models.preprocessing import Preprocessing


class Predictor:
  """Labels images with a model; one compiled program per image size."""

  def __init__(
      self,
      loaded: LoadedModel,
      *,
      settings: InferenceSettings = InferenceSettings(),
      dataset: str | None = None,
      batch_size: int = 1,
  ):
    """
    Args:
      loaded: the model (:func:`ccnet_jax.loading.load_model`).
      settings: whole image or sliding windows, scales, flip.
      dataset: palette / label-id convention; default: inferred from the class count.
      batch_size: images of one size predicted together; a short batch is padded so
        every batch of a size reuses one compiled program.
    """
    if int(batch_size) < 1:
      raise ValueError(f"--batch_size={batch_size} must be at least 1.")
    self.loaded = loaded
    self.preprocessing = loaded.preprocessing
    self.dataset = dataset_for_model(loaded.num_classes, dataset)
    self.batch_size = int(batch_size)
    predict_fn, self._state = model_predict_fn(loaded.model)
    infer = functools.partial(predict_logits, num_classes=loaded.num_classes, settings=settings)
    self._labels = jax.jit(
        lambda state, images: jnp.argmax(infer(functools.partial(predict_fn, state), images), -1)
    )

  def __call__(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
    """(H, W) uint8 train ids for each uint8 (H, W, 3) RGB image; all of one size."""
    return label_in_batches(
        images, self.batch_size, self.preprocessing, functools.partial(self._labels, self._state)
    )


def label_in_batches(
    images: Sequence[np.ndarray],
    batch_size: int,
    preprocessing: Preprocessing,
    labels: Callable[[np.ndarray], jax.Array],
) -> list[np.ndarray]:
  """``labels`` (normalised batch -> train ids) over ``images`` in batches of ``batch_size``.

  A short last batch is padded with zeros, so every batch of a size reuses one compiled program.
  """
  result = []
  for start in range(0, len(images), batch_size):
    chunk = [preprocessing.normalize(image) for image in images[start : start + batch_size]]
    padding = [np.zeros_like(chunk[0])] * (batch_size - len(chunk))
    result.extend(np.asarray(labels(np.stack(chunk + padding)), np.uint8)[: len(chunk)])
  return result
