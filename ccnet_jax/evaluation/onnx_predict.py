"""``predict.py --model=EXPORT``: the same prediction, with the network run by another runtime.

Inference is evaluation's (:func:`ccnet_jax.evaluation.inference.predict_logits`: whole image
or sliding windows, scales, flips, bilinear upsampling, argmax); the network is an exported
model that a runtime such as ONNX Runtime (``export.onnx_runtime.OnnxModel``) runs on the host,
called from the compiled program through ``jax.pure_callback``.
"""

from __future__ import annotations

import functools
from typing import Protocol, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ccnet_jax.data.transforms import normalize
from ccnet_jax.evaluation.inference import predict_logits
from ccnet_jax.evaluation.predict import _check_settings, dataset_for_model


class RuntimeNetwork(Protocol):
  """An exported network: float32 RGB 0-255 images (B, H, W, 3) -> numpy logits at its stride."""

  num_classes: int
  preprocessing: dict

  def __call__(self, images: np.ndarray) -> np.ndarray:
    ...

  def output_shape(self, input_shape: Sequence[int]) -> tuple[int, ...]:
    ...


def denormalize(images: np.ndarray, preprocessing) -> np.ndarray:
  """The inverse of ``normalize``: the model's input -> RGB 0-255, as the export takes it."""
  images = images * np.asarray(preprocessing["std"], np.float32)
  images = images + np.asarray(preprocessing["mean"], np.float32)
  return images[..., ::-1] if preprocessing["channel_order"] == "bgr" else images


class RuntimePredictor:
  """An exported network with fixed inference settings: uint8 RGB images in, train ids out.

  Same interface and inference as :class:`ccnet_jax.evaluation.predict.Predictor`. Images are
  normalised as for the JAX model and turned back into RGB 0-255 just before the runtime (whose
  graph normalises them again): sliding windows pad the normalised image with zeros, as the
  official code does, which no padding of the RGB image would reproduce.
  """

  def __init__(
      self,
      network: RuntimeNetwork,
      *,
      dataset: str | None = None,
      mode: str = "whole",
      crop_size: Sequence[int] = (769, 769),
      overlap: float = 1 / 3,
      scales: Sequence[float] = (1.0,),
      flip: bool = False,
      batch_size: int = 1,
  ):
    _check_settings(mode, crop_size, overlap, scales, batch_size)
    self.network = network
    self.preprocessing = network.preprocessing
    self.dataset = dataset_for_model(network.num_classes, dataset)
    self.batch_size = int(batch_size)
    infer = functools.partial(
        predict_logits,
        num_classes=self.dataset.num_classes,
        mode=mode,
        crop_size=tuple(int(c) for c in crop_size),
        overlap=float(overlap),
        scales=tuple(float(s) for s in scales),
        flip=bool(flip),
    )
    self._labels = jax.jit(lambda images: jnp.argmax(infer(self._logits, images), -1))

  def _logits(self, images: jax.Array) -> jax.Array:
    """Normalised images -> logits at the output stride, computed by the runtime."""
    shape = self.network.output_shape(images.shape)
    run = lambda x: self.network(denormalize(np.asarray(x), self.preprocessing))
    return jax.pure_callback(run, jax.ShapeDtypeStruct(shape, jnp.float32), images)

  def normalize(self, image: np.ndarray) -> np.ndarray:
    return normalize(image, **self.preprocessing)

  def __call__(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
    """(H, W) uint8 train ids for each uint8 (H, W, 3) RGB image; all of one size."""
    labels = []
    for start in range(0, len(images), self.batch_size):
      chunk = [self.normalize(image) for image in images[start : start + self.batch_size]]
      padding = [np.zeros_like(chunk[0])] * (self.batch_size - len(chunk))
      batch = np.stack(chunk + padding)
      labels.extend(np.asarray(self._labels(batch), np.uint8)[: len(chunk)])
    return labels
