"""Augmentation and preprocessing against a float64 reference of the recipe, OpenCV and torch."""

from __future__ import annotations

import collections

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ccnet_jax.data import transforms
from ccnet_jax.data.config import data_config
from ccnet_jax.models.preprocessing import Preprocessing
from tests import augmentation_reference as reference


def _torch_resize(array: np.ndarray, size, mode: str) -> np.ndarray:
  tensor = torch.from_numpy(np.ascontiguousarray(array, np.float64))
  if tensor.ndim == 2:
    tensor = tensor[..., None]
  tensor = tensor.permute(2, 0, 1)[None]
  kwargs = {"align_corners": False, "antialias": False} if mode == "bilinear" else {}
  out = F.interpolate(tensor, size=size, mode=mode, **kwargs)
  return out[0].permute(1, 2, 0).numpy()


@pytest.mark.parametrize("size", [(13, 29), (4, 7), (9, 10)])
def test_reference_resizes_are_torchs(size):
  rng = np.random.default_rng(0)
  image = rng.integers(0, 256, (9, 10, 3)).astype(np.uint8)
  np.testing.assert_allclose(
      reference.resize_bilinear_half_pixel(image, size),
      _torch_resize(image, size, "bilinear"),
      rtol=1e-12,
      atol=1e-12,
  )
  label = rng.choice([0, 3, 7, 255], (9, 10)).astype(np.uint8)
  np.testing.assert_array_equal(
      reference.resize_nearest(label, size), _torch_resize(label, size, "nearest")[..., 0]
  )


def _windows(size, crop, rng, count=6):
  """Windows of a crop in an image of ``size``: the four corners and random ones."""
  tops, lefts = max(size[0] - crop[0], 0), max(size[1] - crop[1], 0)
  corners = [(0, 0), (0, lefts), (tops, 0), (tops, lefts)]
  starts = corners + [
      (int(rng.integers(tops + 1)), int(rng.integers(lefts + 1))) for _ in range(count)
  ]
  return [(t, l, min(crop[0], size[0] - t), min(crop[1], size[1] - l)) for t, l in starts]


# The Cityscapes scales (0.5 .. 1.6: exact halving, identity, upsampling) and uniform ADE20K ones.
_SCALES = [0.5 + k / 10 for k in range(12)] + [0.537, 0.91, 1.333, 1.87, 2.0]


@pytest.mark.parametrize("shape", [(64, 128), (37, 51)])
def test_resize_window_is_opencvs_whole_resize_within_one_grey_level_of_float64(shape):
  """The windowed resize gives OpenCV's whole-image pixels (the official pipeline's) bit for
  bit, and each is one of the two integers around the exact float64 value (|error| < 1): OpenCV
  computes in fixed point (11-bit weights, truncating), so it is not always the nearest one
  (about 89% of these pixels are, and the mean error is about -0.1)."""
  rng = np.random.default_rng(0)
  image = rng.integers(0, 256, shape + (3,)).astype(np.uint8)
  errors = []
  for scale in _SCALES:
    size = transforms.scaled_size_half_even(shape, scale)
    whole = cv2.resize(image, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
    exact = reference.resize_bilinear_half_pixel(image, size)
    for top, left, height, width in _windows(size, (24, 40), rng):
      got = transforms.resize_bilinear(image, size, (top, left, height, width))
      window = np.s_[top : top + height, left : left + width]
      assert got.dtype == np.uint8 and got.shape == (height, width, 3)
      np.testing.assert_array_equal(got, whole[window], err_msg=f"scale {scale}")
      errors.append((got - exact[window]).ravel())
  errors = np.concatenate(errors)
  assert np.abs(errors).max() < 1.0


def test_resize_nearest_window_is_the_window_of_the_whole_resize():
  rng = np.random.default_rng(1)
  label = rng.integers(0, 256, (37, 51)).astype(np.uint8)
  for scale in _SCALES:
    size = transforms.scaled_size_half_even(label.shape, scale)
    whole = reference.resize_nearest(label, size)
    for top, left, height, width in _windows(size, (24, 40), rng):
      got = transforms.resize_nearest(label, size, (top, left, height, width))
      np.testing.assert_array_equal(got, whole[top : top + height, left : left + width])


def test_random_scale_official_set_and_uniform_range():
  rng = np.random.default_rng(0)
  draws = [transforms.sample_scale(rng, 0.5, 1.6, 0.1) for _ in range(6000)]
  counts = collections.Counter(round(s, 6) for s in draws)
  assert sorted(counts) == [round(0.5 + k / 10, 6) for k in range(12)]
  for count in counts.values():
    assert abs(count / 6000 - 1 / 12) < 0.02
  uniform = np.array([transforms.sample_scale(rng, 0.5, 2.0, 0.0) for _ in range(4000)])
  assert uniform.min() >= 0.5 and uniform.max() <= 2.0
  assert abs(uniform.mean() - 1.25) < 0.03 and abs(uniform.std() - 1.5 / np.sqrt(12)) < 0.03
  assert transforms.scaled_size_half_even((20, 30), 0.5 + 5 / 10) == (20, 30)
  assert transforms.scaled_size_half_even((1024, 2048), 0.6) == (614, 1229)


def _box_mask(box: np.ndarray, shape) -> np.ndarray:
  top, left, bottom, right = box
  rows, cols = np.arange(shape[0])[:, None], np.arange(shape[1])[None, :]
  return (rows >= top) & (rows < bottom) & (cols >= left) & (cols < right)


@pytest.mark.parametrize(
    "name,crop", [("cityscapes", (24, 40)), ("ade20k", (50, 20)), ("synthetic", (16, 16))]
)
def test_train_transform_is_the_recipe_step_by_step(name, crop):
  """Same draws, same labels, the image box where the recipe has image pixels, and pixels
  within one grey level of the float64 recipe (see the resize test); unscaled crops exact."""
  config = data_config(name)
  config.crop_size = crop
  rng = np.random.default_rng(0)
  image = rng.integers(0, 256, (30, 36, 3)).astype(np.uint8)
  label = rng.choice([0, 4, 9, 255], (30, 36)).astype(np.uint8)
  std = np.asarray(config.std)
  padded = 0
  for seed in range(16):
    want_image, want_label, inside = reference.train_crop(
        image, label, config, np.random.default_rng(seed)
    )
    got = transforms.train_transform(
        {"image": image, "label": label, "name": "x"}, config, np.random.default_rng(seed)
    )
    assert got["image"].dtype == np.uint8 and got["image"].shape == crop + (3,)
    assert got["label"].dtype == np.uint8 and got["image_box"].dtype == np.int32
    np.testing.assert_array_equal(got["label"], want_label)
    np.testing.assert_array_equal(_box_mask(got["image_box"], crop), inside)
    pixels = reference.normalize(got["image"], config.mean, config.std, config.channel_order)
    error = np.abs(pixels - want_image)[inside] * std  # in grey levels
    assert np.all(want_image[~inside] == 0)
    if (config.scale_min, config.scale_max) == (1.0, 1.0):
      assert error.max() < 1e-9
    else:
      assert error.max() < 1.0
    padded += not inside.all()
  assert padded > 0 or name == "synthetic"


def test_train_transform_pads_small_images_with_ignore_outside_the_box():
  config = data_config("cityscapes")
  config.crop_size = (40, 48)
  rng = np.random.default_rng(3)
  image = rng.integers(0, 256, (16, 20, 3)).astype(np.uint8)
  label = rng.choice([0, 5, 255], (16, 20)).astype(np.uint8)
  flipped = 0
  for seed in range(8):
    out = transforms.train_transform(
        {"image": image, "label": label, "name": "x"}, config, np.random.default_rng(seed)
    )
    top, left, bottom, right = out["image_box"]
    # The scaled image is at most 1.6 * (16, 20) = (26, 32): the rest is padding.
    assert top == 0 and bottom <= 26 and right - left <= 32 and (left == 0 or right == 48)
    inside = _box_mask(out["image_box"], (40, 48))
    assert np.all(out["label"][~inside] == 255) and set(np.unique(out["label"])) <= {0, 5, 255}
    flipped += int(right == 48)
  assert 0 < flipped < 8  # a flipped crop has its image on the right


def test_eval_transform_keeps_full_size():
  config = data_config("ade20k")
  image = np.random.default_rng(0).integers(0, 256, (17, 23, 3)).astype(np.uint8)
  label = np.ones((17, 23), np.uint8)
  out = transforms.eval_transform(
      {"image": image, "label": label, "name": "a"}, Preprocessing.from_config(config)
  )
  assert out["image"].shape == (17, 23, 3) and out["label"].dtype == np.int32
  expected = (image - np.float32(config.mean)) / np.float32(config.std)
  # The same two float32 operations in numpy: bit for bit.
  np.testing.assert_array_equal(out["image"], expected)
  assert out["name"] == "a"
