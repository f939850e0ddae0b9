"""The training augmentation step by step on whole images in float64: the reference the
loader's uint8 crops are checked against (tests/test_data_transforms.py).

Bilinear resampling with half-pixel centres (OpenCV INTER_LINEAR, torch ``align_corners=False``)
of the whole image, normalisation, padding with 0 (the mean) and the void label, a random crop
and a random flip, each drawing from the generator in the recipe's order.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ccnet_jax.data import transforms
from ccnet_jax.data.labels import IGNORE_LABEL


def _source_coordinates(out_size: int, in_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Bilinear taps (low, high) and the weight of high for every output position."""
  coord = (np.arange(out_size, dtype=np.float64) + 0.5) * (in_size / out_size) - 0.5
  coord = np.maximum(coord, 0.0)
  low = np.minimum(np.floor(coord).astype(np.int64), in_size - 1)
  high = np.minimum(low + 1, in_size - 1)
  return low, high, coord - low


def resize_bilinear_half_pixel(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
  """(H, W, C) -> float64 (h, w, C), the exact bilinear values with half-pixel centres."""
  y0, y1, fy = _source_coordinates(size[0], image.shape[0])
  x0, x1, fx = _source_coordinates(size[1], image.shape[1])
  source = image.astype(np.float64)
  rows = source[y0] * (1.0 - fy)[:, None, None] + source[y1] * fy[:, None, None]
  return rows[:, x0] * (1.0 - fx)[None, :, None] + rows[:, x1] * fx[None, :, None]


def resize_nearest(label: np.ndarray, size: tuple[int, int]) -> np.ndarray:
  """Nearest neighbour of output pixel i: source floor(i * in / out) (torch 'nearest')."""
  rows = np.minimum(
      (np.arange(size[0]) * (label.shape[0] / size[0])).astype(np.int64), label.shape[0] - 1
  )
  cols = np.minimum(
      (np.arange(size[1]) * (label.shape[1] / size[1])).astype(np.int64), label.shape[1] - 1
  )
  return label[rows[:, None], cols[None, :]]


def normalize(image: np.ndarray, mean, std, channel_order: str) -> np.ndarray:
  image = np.asarray(image, np.float64)
  if channel_order == "bgr":
    image = image[..., ::-1]
  return (image - np.asarray(mean, np.float64)) / np.asarray(std, np.float64)


def pad_to(arrays: Sequence[np.ndarray], fills: Sequence[float], size) -> list[np.ndarray]:
  """Pads bottom and right up to at least ``size`` = (h, w), each array with its fill."""
  out = []
  for array, fill in zip(arrays, fills):
    pad_h, pad_w = max(0, size[0] - array.shape[0]), max(0, size[1] - array.shape[1])
    widths = ((0, pad_h), (0, pad_w)) + ((0, 0),) * (array.ndim - 2)
    out.append(np.pad(array, widths, constant_values=fill))
  return out


def train_crop(image: np.ndarray, label: np.ndarray, config, rng: np.random.Generator):
  """(float64 normalised crop, label crop, bool mask of the image pixels in the crop)."""
  if (config.scale_min, config.scale_max) != (1.0, 1.0):
    scale = transforms.sample_scale(rng, config.scale_min, config.scale_max, config.scale_step)
    size = transforms.scaled_size_half_even(image.shape, scale)
    image, label = resize_bilinear_half_pixel(image, size), resize_nearest(label, size)
  image = normalize(image, config.mean, config.std, config.channel_order)
  inside = np.ones(label.shape, bool)
  crop_h, crop_w = config.crop_size
  image, label, inside = pad_to(
      (image, label, inside), (0.0, IGNORE_LABEL, False), config.crop_size
  )
  top = int(rng.integers(image.shape[0] - crop_h + 1))
  left = int(rng.integers(image.shape[1] - crop_w + 1))
  window = np.s_[top : top + crop_h, left : left + crop_w]
  image, label, inside = image[window], label[window], inside[window]
  if config.flip and rng.random() < 0.5:
    image, label, inside = image[:, ::-1], label[:, ::-1], inside[:, ::-1]
  return image, label, inside
