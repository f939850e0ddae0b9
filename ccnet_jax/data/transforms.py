"""Training augmentation and evaluation preprocessing on numpy arrays.

Every random choice takes an explicit ``np.random.Generator`` so an example's augmentation is
a function of the pipeline's seed and the example's position in the stream (see pipeline.py).
The training recipe follows the official CCNet: random scale, normalise, pad the image with 0
(the mean, after normalisation) and the label with 255 up to the crop, random crop, random
horizontal flip. The crop leaves the host as uint8 with the box of its image pixels; the train
step normalises it and zeroes the padding (``training.step``), a quarter of the bytes of float32.
"""

from __future__ import annotations

from typing import Sequence

import cv2
import ml_collections
import numpy as np

from ccnet_jax.data.labels import IGNORE_LABEL
from ccnet_jax.models.preprocessing import Preprocessing

# The loaders parallelise over examples (grain workers, the evaluation's threads); OpenCV's own
# thread pool would only compete with them.
cv2.setNumThreads(1)


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


def _source_extent(end: int, in_size: int, out_size: int) -> int:
  """How many source pixels from 0 output pixels [0, end) read, plus two: with them OpenCV's
  border clamp never reaches the window (it clamps at the last pixel it is given)."""
  last_tap = int(np.floor((end - 0.5) * (in_size / out_size) - 0.5)) + 1
  return min(in_size, last_tap + 2)


def resize_bilinear(image: np.ndarray, size: tuple[int, int], window: Window) -> np.ndarray:
  """The ``window`` of an (H, W, C) uint8 image resized to ``size`` = (h, w) bilinearly with
  half-pixel centres (OpenCV INTER_LINEAR, torch ``align_corners=False``); uint8 out.

  OpenCV derives every output position from the scale factors alone, so resizing the part of
  the image from its top-left corner to just past the window, at the whole image's factors,
  gives the pixels of the whole resized image bit for bit; the rest is never computed.
  """
  top, left, height, width = window
  in_h, in_w = image.shape[:2]
  rows = _source_extent(top + height, in_h, size[0])
  cols = _source_extent(left + width, in_w, size[1])
  out = cv2.resize(
      image[:rows, :cols],
      None,
      fx=size[1] / in_w,
      fy=size[0] / in_h,
      interpolation=cv2.INTER_LINEAR,
  )
  return out[top : top + height, left : left + width]


def resize_nearest(label: np.ndarray, size: tuple[int, int], window: Window) -> np.ndarray:
  """The ``window`` of an (H, W) label map resized to ``size`` with nearest neighbours
  (OpenCV INTER_NEAREST, torch 'nearest')."""
  top, left, height, width = window
  in_h, in_w = label.shape
  rows = np.minimum((np.arange(top, top + height) * (in_h / size[0])).astype(np.int64), in_h - 1)
  cols = np.minimum((np.arange(left, left + width) * (in_w / size[1])).astype(np.int64), in_w - 1)
  return label.take(rows, axis=0).take(cols, axis=1)


def scaled_size_half_even(shape: Sequence[int], scale: float) -> tuple[int, int]:
  """The (h, w) of ``shape`` at ``scale``, rounded half to even (Python's round), at least 1."""
  return max(1, int(round(shape[0] * scale))), max(1, int(round(shape[1] * scale)))


def train_transform(
    example: dict, config: ml_collections.ConfigDict, rng: np.random.Generator
) -> dict:
  """Scale, pad, crop, flip: {'image': uint8 (h, w, 3) RGB, 'label': uint8 (h, w),
  'image_box': int32 (4,)}.

  ``image_box`` is (top, left, bottom, right) of the image pixels in the crop; the rest is
  padding (label ``IGNORE_LABEL``, void), which normalisation sets to 0, the mean colour, as the
  recipe pads after subtracting the mean. The random draws are the recipe's, in its order
  (scale, crop offset, flip), and only the pixels of the crop are resampled: a 1024x2048 image
  scaled by 1.6 is never built whole. The arrays may be views; batching copies them once.
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
  height, width = max(0, min(crop_h, size[0] - top)), max(0, min(crop_w, size[1] - left))
  if size == image.shape[:2]:
    image = image[top : top + height, left : left + width]
    label = label[top : top + height, left : left + width]
  else:
    image = resize_bilinear(image, size, (top, left, height, width))
    label = resize_nearest(label, size, (top, left, height, width))
  if (height, width) != (crop_h, crop_w):
    padding = (0, crop_h - height, 0, crop_w - width)
    image = cv2.copyMakeBorder(image, *padding, cv2.BORDER_CONSTANT, value=(0, 0, 0))
    label = cv2.copyMakeBorder(label, *padding, cv2.BORDER_CONSTANT, value=IGNORE_LABEL)
  box = (0, 0, height, width)
  if config.flip and rng.random() < 0.5:
    image, label = cv2.flip(image, 1), cv2.flip(label, 1)
    box = (0, crop_w - width, height, crop_w)
  return {"image": image, "label": label, "image_box": np.array(box, np.int32)}


def eval_transform(example: dict, preprocessing: Preprocessing) -> dict:
  """Normalisation only, full image: {'image': float32, 'label': int32, 'name': str}."""
  return {
      "image": preprocessing.normalize(example["image"]),
      "label": np.asarray(example["label"], np.int32),
      "name": example["name"],
  }
