"""What a model's weights expect of an image: the one type for input normalisation.

A :class:`Preprocessing` turns RGB images on the 0-255 scale into the network's input,
``(x - mean) / std`` in the channel order of the weights (the official CCNet was trained on
BGR, torchvision and mmseg backbones on RGB). It is what a model directory records beside
the weights (``model.json``), what a data config describes (``data.channel_order``,
``data.mean``, ``data.std``) and what every reader of images applies: the data pipeline, the
evaluator (which inverts it for its PNGs), prediction and the serving export.

``normalize`` takes numpy arrays (and returns numpy) or JAX arrays, traced ones included (and
returns JAX), so the same value serves the host pipeline and a jitted step; the instance is
frozen and hashable, so it can be a static argument or a closed-over constant of ``jax.jit``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

CHANNEL_ORDERS = ("rgb", "bgr")


@dataclasses.dataclass(frozen=True)
class Preprocessing:
  """``(x - mean) / std`` in ``channel_order``; ``mean`` and ``std`` are in that order, 0-255."""

  channel_order: str
  mean: tuple[float, float, float]
  std: tuple[float, float, float]

  def __post_init__(self):
    order = str(self.channel_order).lower()
    if order not in CHANNEL_ORDERS:
      raise ValueError(
          f"preprocessing.channel_order={self.channel_order!r} is not one of {CHANNEL_ORDERS}."
      )
    object.__setattr__(self, "channel_order", order)
    for field in ("mean", "std"):
      values = tuple(float(v) for v in getattr(self, field))
      if len(values) != 3:
        raise ValueError(f"preprocessing.{field}={values} must have three values (one a channel).")
      object.__setattr__(self, field, values)
    if any(v <= 0 for v in self.std):
      raise ValueError(f"preprocessing.std={self.std} must be positive.")

  @classmethod
  def from_json(cls, values: Mapping[str, Any]) -> Preprocessing:
    """From ``to_json()``'s dict (``model.json``), naming what is missing."""
    missing = {"channel_order", "mean", "std"} - set(values)
    if missing:
      raise ValueError(
          f"preprocessing lacks {sorted(missing)}; give channel_order ('rgb' or 'bgr'),"
          " mean and std (three values each, 0-255 scale)."
      )
    return cls(values["channel_order"], values["mean"], values["std"])

  @classmethod
  def from_config(cls, data_config: Any) -> Preprocessing:
    """The normalisation a data config trains with (``channel_order``, ``mean``, ``std``)."""
    return cls(data_config.channel_order, data_config.mean, data_config.std)

  def to_json(self) -> dict[str, Any]:
    return {"channel_order": self.channel_order, "mean": list(self.mean), "std": list(self.std)}

  def normalize(self, images):
    """RGB ``(..., 3)`` on the 0-255 scale -> float32 network input (numpy or JAX, as given)."""
    xp = jnp if isinstance(images, jax.Array) else np
    images = xp.asarray(images).astype(xp.float32)
    if self.channel_order == "bgr":
      images = images[..., ::-1]
    return (images - xp.asarray(self.mean, xp.float32)) / xp.asarray(self.std, xp.float32)

  def rgb_values(self, images) -> np.ndarray:
    """Network input ``(..., 3)`` -> the float32 RGB values on the 0-255 scale it came from."""
    pixels = np.asarray(images, np.float32) * np.asarray(self.std, np.float32) + np.asarray(
        self.mean, np.float32
    )
    return pixels[..., ::-1] if self.channel_order == "bgr" else pixels

  def denormalize(self, images) -> np.ndarray:
    """Network input ``(..., 3)`` -> the RGB uint8 image it came from (rounded, clipped)."""
    return np.clip(np.round(self.rgb_values(images)), 0, 255).astype(np.uint8)


# ImageNet statistics in RGB order: what torchvision, mmseg and models trained here from those
# backbones expect.
IMAGENET = Preprocessing("rgb", (123.675, 116.28, 103.53), (58.395, 57.12, 57.375))
# Official CCNet (speedinghzl/CCNet, dataset/datasets.py, Caffe-style ImageNet weights):
# BGR, mean subtraction only.
OFFICIAL = Preprocessing("bgr", (104.00698793, 116.66876762, 122.67891434), (1.0, 1.0, 1.0))
