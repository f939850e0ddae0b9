"""Augmentation and preprocessing against torch resizing and direct numpy checks."""

from __future__ import annotations

import collections

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ccnet_jax.data import transforms
from ccnet_jax.data.config import data_config
from ccnet_jax.models.preprocessing import Preprocessing


def _torch_resize(array: np.ndarray, size, mode: str) -> np.ndarray:
  tensor = torch.from_numpy(np.ascontiguousarray(array, np.float32))
  if tensor.ndim == 2:
    tensor = tensor[..., None]
  tensor = tensor.permute(2, 0, 1)[None]
  kwargs = {"align_corners": False, "antialias": False} if mode == "bilinear" else {}
  out = F.interpolate(tensor, size=size, mode=mode, **kwargs)
  return out[0].permute(1, 2, 0).numpy()


@pytest.mark.parametrize("size", [(13, 29), (4, 7), (9, 10)])
def test_resize_bilinear_matches_torch(size):
  image = np.random.default_rng(0).integers(0, 256, (9, 10, 3)).astype(np.uint8)
  np.testing.assert_allclose(
      transforms.resize_bilinear_half_pixel(image, size),
      _torch_resize(image, size, "bilinear"),
      atol=1e-3,
  )


@pytest.mark.parametrize("size", [(13, 29), (4, 7)])
def test_resize_nearest_matches_torch_and_keeps_label_set(size):
  label = np.random.default_rng(1).choice([0, 3, 7, 255], (9, 10)).astype(np.uint8)
  out = transforms.resize_nearest(label, size)
  np.testing.assert_array_equal(out, _torch_resize(label, size, "nearest")[..., 0])
  assert set(np.unique(out)) <= {0, 3, 7, 255}


def test_random_scale_official_set_and_sizes():
  rng = np.random.default_rng(0)
  draws = [transforms.sample_scale(rng, 0.5, 1.6, 0.1) for _ in range(6000)]
  counts = collections.Counter(round(s, 6) for s in draws)
  assert sorted(counts) == [round(0.5 + k / 10, 6) for k in range(12)]
  for count in counts.values():
    assert abs(count / 6000 - 1 / 12) < 0.02
  uniform = np.array([transforms.sample_scale(rng, 0.5, 2.0, 0.0) for _ in range(4000)])
  assert uniform.min() >= 0.5 and uniform.max() <= 2.0
  assert abs(uniform.mean() - 1.25) < 0.03 and abs(uniform.std() - 1.5 / np.sqrt(12)) < 0.03

  image = np.zeros((20, 30, 3), np.uint8)
  label = np.random.default_rng(2).choice([1, 2, 255], (20, 30)).astype(np.uint8)
  seen = set()
  for seed in range(40):
    scale = transforms.sample_scale(np.random.default_rng(seed), 0.5, 1.6, 0.1)
    out_image, out_label = transforms.random_scale(
        image, label, np.random.default_rng(seed), scale_min=0.5, scale_max=1.6, scale_step=0.1
    )
    assert out_image.shape == (round(20 * scale), round(30 * scale), 3)
    assert out_label.shape == out_image.shape[:2]
    assert set(np.unique(out_label)) <= {1, 2, 255}
    seen.add(out_label.shape)
  assert len(seen) > 5


def test_pad_to_fills_mean_and_ignore():
  image = np.full((3, 4, 3), 7.0, np.float32)
  label = np.ones((3, 4), np.uint8)
  out_image, out_label = transforms.pad_to(image, label, (5, 6))
  assert out_image.shape == (5, 6, 3) and out_label.shape == (5, 6)
  np.testing.assert_array_equal(out_image[:3, :4], image)
  np.testing.assert_array_equal(out_label[:3, :4], label)
  assert np.all(out_image[3:] == 0) and np.all(out_image[:, 4:] == 0)
  assert np.all(out_label[3:] == 255) and np.all(out_label[:, 4:] == 255)
  same_image, _ = transforms.pad_to(image, label, (2, 2))
  assert same_image.shape == image.shape


def test_random_crop_is_a_window_of_the_input():
  rng = np.random.default_rng(0)
  image = rng.random((10, 12, 3)).astype(np.float32)
  label = np.arange(120).reshape(10, 12)
  offsets = set()
  for seed in range(30):
    out_image, out_label = transforms.random_crop(image, label, (4, 5), np.random.default_rng(seed))
    assert out_image.shape == (4, 5, 3) and out_label.shape == (4, 5)
    top, left = divmod(int(out_label[0, 0]), 12)
    np.testing.assert_array_equal(out_image, image[top : top + 4, left : left + 5])
    offsets.add((top, left))
  assert len(offsets) > 10
  with pytest.raises(ValueError, match="pad_to"):
    transforms.random_crop(image, label, (11, 5), rng)


def test_random_flip_flips_image_and_label_together():
  label = np.random.default_rng(0).integers(0, 5, (6, 7)).astype(np.uint8)
  image = np.stack([label, label * 2, label * 3], -1).astype(np.float32)
  flipped = 0
  for seed in range(40):
    out_image, out_label = transforms.random_flip(image, label, np.random.default_rng(seed))
    np.testing.assert_array_equal(out_image[..., 0], out_label)
    if not np.array_equal(out_label, label):
      np.testing.assert_array_equal(out_label, label[:, ::-1])
      flipped += 1
  assert 8 < flipped < 32


def test_train_transform_pads_small_images_with_ignore():
  config = data_config("cityscapes")
  config.crop_size = (40, 48)
  rng = np.random.default_rng(3)
  image = rng.integers(0, 256, (16, 20, 3)).astype(np.uint8)
  label = rng.choice([0, 5, 255], (16, 20)).astype(np.uint8)
  for seed in range(5):
    out = transforms.train_transform(
        {"image": image, "label": label, "name": "x"}, config, np.random.default_rng(seed)
    )
    assert out["image"].shape == (40, 48, 3) and out["image"].dtype == np.float32
    assert out["label"].shape == (40, 48) and out["label"].dtype == np.int32
    assert set(np.unique(out["label"])) <= {0, 5, 255}
    # The scaled image is at most 1.6 * (16, 20) = (26, 32): the rest is padding.
    assert np.all(out["label"][26:] == 255) and np.all(out["image"][26:] == 0)


def test_eval_transform_keeps_full_size():
  config = data_config("ade20k")
  image = np.random.default_rng(0).integers(0, 256, (17, 23, 3)).astype(np.uint8)
  label = np.ones((17, 23), np.uint8)
  out = transforms.eval_transform(
      {"image": image, "label": label, "name": "a"}, Preprocessing.from_config(config)
  )
  assert out["image"].shape == (17, 23, 3) and out["label"].dtype == np.int32
  expected = (image - np.float32(config.mean)) / np.float32(config.std)
  np.testing.assert_allclose(out["image"], expected, rtol=1e-5)
  assert out["name"] == "a"


@pytest.mark.parametrize(
    "name,crop", [("cityscapes", (24, 40)), ("ade20k", (50, 20)), ("synthetic", (16, 16))]
)
def test_train_transform_equals_the_composition_of_the_steps(name, crop):
  """The windowed fast path against the plain chain: scale, normalise, pad, crop, flip."""
  config = data_config(name)
  config.crop_size = crop
  image = np.random.default_rng(0).integers(0, 256, (30, 36, 3)).astype(np.uint8)
  label = np.random.default_rng(1).choice([0, 4, 9, 255], (30, 36)).astype(np.uint8)
  for seed in range(12):
    rng = np.random.default_rng(seed)
    want_image, want_label = image, label
    if (config.scale_min, config.scale_max) != (1.0, 1.0):
      want_image, want_label = transforms.random_scale(
          image,
          label,
          rng,
          scale_min=config.scale_min,
          scale_max=config.scale_max,
          scale_step=config.scale_step,
      )
    want_image = Preprocessing.from_config(config).normalize(want_image)
    want_image, want_label = transforms.pad_to(want_image, want_label, crop)
    want_image, want_label = transforms.random_crop(want_image, want_label, crop, rng)
    want_image, want_label = transforms.random_flip(want_image, want_label, rng)
    got = transforms.train_transform(
        {"image": image, "label": label, "name": "x"}, config, np.random.default_rng(seed)
    )
    np.testing.assert_allclose(got["image"], want_image, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(got["label"], want_label)
