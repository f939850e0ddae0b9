"""Whole / sliding / multi-scale + flip inference against a numpy + torch transcription
of the official CCNet evaluate.py (predict_sliding, predict_multiscale)."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ccnet_jax.evaluation.config import base_eval_config
from ccnet_jax.evaluation.inference import InferenceSettings, predict_logits, sliding_window_offsets
from tests import torch_reference
from tests.helpers import tiny_ccnet

torch = pytest.importorskip("torch")

NUM_CLASSES = 4
STRIDE = 8
_rng = np.random.default_rng(0)
WEIGHTS = _rng.normal(size=(3, NUM_CLASSES)).astype(np.float32)
BIAS = _rng.normal(size=(NUM_CLASSES,)).astype(np.float32)


def pooled_linear(images):
  """Average pooling (stride 8, valid) then a fixed linear map: position-dependent logits."""
  pooled = (
      jax.lax.reduce_window(
          images, 0.0, jax.lax.add, (1, STRIDE, STRIDE, 1), (1, STRIDE, STRIDE, 1), "VALID"
      )
      / STRIDE**2
  )
  return pooled @ WEIGHTS + BIAS


def pooled_linear_numpy(images):
  b, h, w, c = images.shape
  out = np.zeros((b, h // STRIDE, w // STRIDE, NUM_CLASSES), np.float64)
  for i in range(h // STRIDE):
    for j in range(w // STRIDE):
      patch = images[:, i * STRIDE : (i + 1) * STRIDE, j * STRIDE : (j + 1) * STRIDE]
      out[:, i, j] = patch.mean(axis=(1, 2)) @ WEIGHTS + BIAS
  return out


def official_multiscale(image, scales, flip, sliding_tile=None):
  _, height, width, _ = image.shape
  total = 0
  for scale in scales:
    size = (int(height * scale + 0.5), int(width * scale + 0.5))
    scaled = torch_reference.resize_align_corners(image, size)
    for flipped in (False, True) if flip else (False,):
      x = scaled[:, :, ::-1] if flipped else scaled
      if sliding_tile is None:
        logits = torch_reference.resize_align_corners(
            pooled_linear_numpy(x).astype(np.float32), (height, width)
        )
      else:
        logits = torch_reference.resize_align_corners(
            torch_reference.official_sliding(x, sliding_tile, pooled_linear_numpy).astype(
                np.float32
            ),
            (height, width),
        )
      total = total + (logits[:, :, ::-1] if flipped else logits)
  return total / (len(scales) * (2 if flip else 1))


def _images(shape, seed=1):
  return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def _predict(images, **settings):
  settings = InferenceSettings(**settings)
  fn = jax.jit(
      lambda x: predict_logits(pooled_linear, x, num_classes=NUM_CLASSES, settings=settings)
  )
  return fn(images)


@pytest.mark.parametrize(
    "shape,crop",
    [
        ((2, 50, 75, 3), (24, 24)),  # 3 x 4 windows, last row and column snapped.
        ((1, 20, 53, 3), (24, 32)),  # shorter than the crop: zero-padded at the bottom.
        ((1, 16, 16, 3), (24, 24)),  # a single padded window.
    ],
)
def test_sliding_matches_official_tiling(shape, crop):
  images = _images(shape)
  actual = _predict(images, mode="sliding", crop_size=crop)
  chex.assert_shape(actual, shape[:3] + (NUM_CLASSES,))
  np.testing.assert_allclose(
      actual,
      torch_reference.official_sliding(images, crop, pooled_linear_numpy),
      rtol=1e-4,
      atol=1e-4,
  )


def test_whole_is_one_pass_upsampled():
  images = _images((2, 40, 56, 3))
  expected = torch_reference.resize_align_corners(
      pooled_linear_numpy(images).astype(np.float32), (40, 56)
  )
  np.testing.assert_allclose(_predict(images, mode="whole"), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("mode", ["whole", "sliding"])
def test_multi_scale_flip_matches_official(mode):
  images = _images((1, 40, 56, 3))
  scales = (0.75, 1.0, 1.25)
  crop = (24, 32)
  actual = _predict(images, mode=mode, crop_size=crop, scales=scales, flip=True)
  expected = official_multiscale(images, scales, True, crop if mode == "sliding" else None)
  np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("mode", "tiles", "mode='tiles' must be one of"),
        ("scales", (), r"scales=\(\) must be one or more positive"),
        ("crop_size", (0, 5), r"crop_size=\(0, 5\) must be two positive"),
        ("overlap", 1.0, "overlap=1.0 must be in"),
    ],
)
def test_bad_settings_name_the_field(field, value, message):
  with pytest.raises(ValueError, match=message):
    InferenceSettings(**{field: value})
  eval_config = base_eval_config()
  eval_config[field] = value
  with pytest.raises(ValueError, match=f"^eval.{message}"):
    InferenceSettings.from_config(eval_config)


def test_logits_of_the_wrong_class_count_are_refused():
  with pytest.raises(ValueError, match="num_classes"):
    jax.jit(lambda x: predict_logits(pooled_linear, x, num_classes=7))(_images((1, 16, 16, 3)))


def test_ccnet_sliding_on_one_crop_equals_whole_image():
  model = tiny_ccnet()
  graphdef, state = nnx.split(model)

  @jax.jit
  def whole_and_sliding(state, images):
    apply_fn = lambda x: nnx.merge(graphdef, state)(x)[0]
    return [
        predict_logits(
            apply_fn,
            images,
            num_classes=5,
            settings=InferenceSettings(mode=mode, crop_size=(33, 41)),
        )
        for mode in ("whole", "sliding")
    ]

  whole, sliding = whole_and_sliding(state, _images((1, 33, 41, 3)))
  assert float(jnp.std(whole)) > 0
  np.testing.assert_allclose(sliding, whole, rtol=1e-5, atol=1e-5)


def test_cityscapes_windows_are_the_official_eight():
  # stride ceil(769 * 2 / 3) = 513: rows 0, 255 (snapped); columns 0, 513, 1026, 1279 (snapped).
  expected = [(y, x) for y in (0, 255) for x in (0, 513, 1026, 1279)]
  assert sliding_window_offsets(1024, 2048, (769, 769), 1 / 3) == expected
  assert sliding_window_offsets(500, 700, (769, 769), 1 / 3) == [(0, 0)]
