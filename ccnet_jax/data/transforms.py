"""Training augmentation and evaluation preprocessing on numpy arrays.

Every random choice takes an explicit ``np.random.Generator`` so an example's augmentation is
a function of the pipeline's seed and the example's position in the stream (see pipeline.py).
The training recipe follows the official CCNet: random scale, normalise, pad the image with 0
(the mean, after normalisation) and the label with 255 up to the crop, random crop, random
horizontal flip.
"""

from __future__ import annotations

from typing import Sequence

import ml_collections
import numpy as np

from ccnet_jax.models.preprocessing import Preprocessing


def sample_scale(
    rng: np.random.Generator, scale_min: float, scale_max: float, scale_step: float
) -> float:
  """A scale from {min, min + step, ..., max} (step > 0) or uniform in [min, max] (step == 0)."""
  if scale_max < scale_min:
    raise ValueError(f"data.scale_max={scale_max} must be >= data.scale_min={scale_min}.")
  if scale_step > 0:
    count = int(np.floor((scale_max - scale_min) / scale_step + 1e-6)) + 1
    return float(scale_min + scale_step * rng.integers(count))
  return float(rng.uniform(scale_min, scale_max))


Window = tuple[int, int, int, int]  # (top, left, height, width) inside the resized image


def _source_coordinates(
    out_size: int, in_size: int, start: int = 0, count: int | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Half-pixel-centre bilinear taps (OpenCV INTER_LINEAR, torch align_corners=False) of
  output positions ``start .. start + count``."""
  count = out_size - start if count is None else count
  positions = np.arange(start, start + count, dtype=np.float64)
  coord = (positions + 0.5) * (in_size / out_size) - 0.5
  coord = np.maximum(coord, 0.0)
  low = np.minimum(np.floor(coord).astype(np.int64), in_size - 1)
  high = np.minimum(low + 1, in_size - 1)
  frac = (coord - low).astype(np.float32)
  return low, high, frac


def resize_bilinear_half_pixel(
    image: np.ndarray, size: tuple[int, int], window: Window | None = None
) -> np.ndarray:
  """Bilinear resize of an (H, W, C) numpy image to ``size`` = (h, w) with half-pixel centres
  (OpenCV INTER_LINEAR); returns float32. Logits are resized on device by
  :func:`ccnet_jax.ops.resize.resize_bilinear`, which follows torch's ``align_corners``.

  With ``window`` only that part of the resized image is computed, which is what a random
  crop of a large rescaled image needs.
  """
  top, left, height, width = window or (0, 0, size[0], size[1])
  y0, y1, fy = _source_coordinates(size[0], image.shape[0], top, height)
  x0, x1, fx = _source_coordinates(size[1], image.shape[1], left, width)
  if height == 0 or width == 0:
    return np.zeros((height, width, image.shape[2]), np.float32)
  # Only the source columns the window reads take part in the vertical pass.
  first, last = int(x0[0]), int(x1[-1]) + 1
  source = image[:, first:last]
  x0, x1 = x0 - first, x1 - first
  upper, lower = source[y0].astype(np.float32), source[y1].astype(np.float32)
  rows = upper * (1.0 - fy)[:, None, None] + lower * fy[:, None, None]
  return rows[:, x0] * (1.0 - fx)[None, :, None] + rows[:, x1] * fx[None, :, None]


def resize_nearest(
    label: np.ndarray, size: tuple[int, int], window: Window | None = None
) -> np.ndarray:
  """Nearest-neighbour resize of an (H, W) label map (OpenCV INTER_NEAREST, torch 'nearest')."""
  top, left, height, width = window or (0, 0, size[0], size[1])
  in_h, in_w = label.shape
  rows = np.minimum((np.arange(top, top + height) * (in_h / size[0])).astype(np.int64), in_h - 1)
  cols = np.minimum((np.arange(left, left + width) * (in_w / size[1])).astype(np.int64), in_w - 1)
  return label[rows[:, None], cols[None, :]]


def scaled_size_half_even(shape: Sequence[int], scale: float) -> tuple[int, int]:
  """The (h, w) of ``shape`` at ``scale``, rounded half to even (Python's round), at least 1."""
  return max(1, int(round(shape[0] * scale))), max(1, int(round(shape[1] * scale)))


def random_scale(
    image: np.ndarray,
    label: np.ndarray,
    rng: np.random.Generator,
    *,
    scale_min: float,
    scale_max: float,
    scale_step: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
  """Rescales image (bilinear, float32 out) and label (nearest) by one random factor."""
  size = scaled_size_half_even(image.shape, sample_scale(rng, scale_min, scale_max, scale_step))
  return resize_bilinear_half_pixel(image, size), resize_nearest(label, size)


def pad_to(
    image: np.ndarray,
    label: np.ndarray,
    size: Sequence[int],
    *,
    image_fill: float = 0.0,
    ignore_label: int = 255,
) -> tuple[np.ndarray, np.ndarray]:
  """Pads bottom and right up to at least ``size`` = (h, w): image with ``image_fill``, label
  with ``ignore_label``. Call after normalisation, so that 0 is the mean colour."""
  pad_h = max(0, int(size[0]) - image.shape[0])
  pad_w = max(0, int(size[1]) - image.shape[1])
  if pad_h == 0 and pad_w == 0:
    return image, label
  image = np.pad(image, ((0, pad_h), (0, pad_w), (0, 0)), constant_values=image_fill)
  label = np.pad(label, ((0, pad_h), (0, pad_w)), constant_values=ignore_label)
  return image, label


def random_crop(
    image: np.ndarray, label: np.ndarray, size: Sequence[int], rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
  """A crop of ``size`` = (h, w) at a uniformly random offset; inputs must be at least as big."""
  height, width = int(size[0]), int(size[1])
  if image.shape[0] < height or image.shape[1] < width:
    raise ValueError(
        f"random_crop needs an input of at least {height}x{width}, got "
        f"{image.shape[0]}x{image.shape[1]}; call pad_to first."
    )
  top = int(rng.integers(image.shape[0] - height + 1))
  left = int(rng.integers(image.shape[1] - width + 1))
  return (
      image[top : top + height, left : left + width],
      label[top : top + height, left : left + width],
  )


def random_flip(
    image: np.ndarray, label: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
  """Mirrors image and label left-right together with probability 1/2."""
  if rng.random() < 0.5:
    return image[:, ::-1], label[:, ::-1]
  return image, label


def train_transform(
    example: dict, config: ml_collections.ConfigDict, rng: np.random.Generator
) -> dict:
  """Scale, normalise, pad, crop, flip: {'image': float32 (h, w, 3), 'label': int32 (h, w)}.

  The same result (and the same random draws) as :func:`random_scale`, normalisation
  (``Preprocessing.from_config(config)``), :func:`pad_to`, :func:`random_crop` and :func:`random_flip` in turn, but only the pixels of
  the crop are resampled: a 1024x2048 image scaled by 1.6 is never built whole.
  """
  image, label = example["image"], example["label"]
  crop_h, crop_w = (int(n) for n in config.crop_size)
  size = image.shape[:2]
  if (config.scale_min, config.scale_max) != (1.0, 1.0):
    size = scaled_size_half_even(
        size, sample_scale(rng, config.scale_min, config.scale_max, config.scale_step)
    )
  top = int(rng.integers(max(size[0], crop_h) - crop_h + 1))
  left = int(rng.integers(max(size[1], crop_w) - crop_w + 1))
  window = (top, left, max(0, min(crop_h, size[0] - top)), max(0, min(crop_w, size[1] - left)))
  if size == image.shape[:2]:
    image = image[top : top + window[2], left : left + window[3]]
    label = label[top : top + window[2], left : left + window[3]]
  else:
    image = resize_bilinear_half_pixel(image, size, window)
    label = resize_nearest(label, size, window)
  image = Preprocessing.from_config(config).normalize(image)
  image, label = pad_to(image, label, (crop_h, crop_w), ignore_label=config.ignore_label)
  if config.flip:
    image, label = random_flip(image, label, rng)
  return {
      "image": np.ascontiguousarray(image, np.float32),
      "label": np.ascontiguousarray(label, np.int32),
  }


def eval_transform(example: dict, preprocessing: Preprocessing) -> dict:
  """Normalisation only, full image: {'image': float32, 'label': int32, 'name': str}."""
  return {
      "image": preprocessing.normalize(example["image"]),
      "label": np.asarray(example["label"], np.int32),
      "name": example["name"],
  }
