"""Prediction with a network that another runtime runs on the host (an ONNX export).

Inference is evaluation's (:func:`ccnet_jax.evaluation.inference.predict_logits`: whole image
or sliding windows, scales, flips, bilinear upsampling, argmax), compiled once per image size as
for a JAX model; only the network is the exported one, called from the compiled program through
``jax.pure_callback`` (``export.onnx_runtime.OnnxModel`` is such a network).
"""

from __future__ import annotations

import functools
from typing import Protocol, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ccnet_jax.data.labels import dataset_for_model
from ccnet_jax.evaluation.inference import InferenceSettings, predict_logits
from ccnet_jax.models.preprocessing import Preprocessing
from ccnet_jax.prediction.predictor import label_in_batches


class RuntimeNetwork(Protocol):
  """An exported network: float32 RGB 0-255 images (B, H, W, 3) -> numpy logits at its stride."""

  num_classes: int
  preprocessing: Preprocessing  # What the export applies inside, before the network.
  description: str  # What runs, for the user: 'ONNX export DIR on ONNX Runtime (cpu)'.

  def __call__(self, images: np.ndarray) -> np.ndarray:
    ...

  def output_shape(self, input_shape: Sequence[int]) -> tuple[int, ...]:
    ...


class RuntimePredictor:
  """Labels images with an exported network; the interface of ``Predictor``.

  Images are normalised as for the JAX model and turned back into RGB 0-255 just before the
  runtime (whose graph normalises them again): sliding windows pad the normalised image with
  zeros, as the official code does, which no padding of the RGB image would reproduce.
  """

  def __init__(
      self,
      network: RuntimeNetwork,
      *,
      settings: InferenceSettings = InferenceSettings(),
      dataset: str | None = None,
      batch_size: int = 1,
  ):
    if int(batch_size) < 1:
      raise ValueError(f"--batch_size={batch_size} must be at least 1.")
    self.network = network
    self.preprocessing = network.preprocessing
    self.dataset = dataset_for_model(network.num_classes, dataset)
    self.batch_size = int(batch_size)
    infer = functools.partial(predict_logits, num_classes=network.num_classes, settings=settings)
    self._labels = jax.jit(lambda images: jnp.argmax(infer(self._logits, images), -1))

  def _logits(self, images: jax.Array) -> jax.Array:
    """Normalised images -> logits at the output stride, computed by the runtime."""
    shape = self.network.output_shape(images.shape)
    run = lambda x: self.network(self.preprocessing.rgb_values(x))
    return jax.pure_callback(run, jax.ShapeDtypeStruct(shape, jnp.float32), images)

  def __call__(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
    """(H, W) uint8 train ids for each uint8 (H, W, 3) RGB image; all of one size."""
    return label_in_batches(images, self.batch_size, self.preprocessing, self._labels)
