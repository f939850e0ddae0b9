"""Whole / sliding / multi-scale + flip inference against a numpy + torch transcription
of the official CCNet evaluate.py (predict_sliding, predict_multiscale).

The transcription runs in float32, as the official code does, and in float64 for the truth;
ccnet-jax's float32 logits are allowed FACTOR x the float32 transcription's error
(tests/numerics.py). Measured: up to 1.16 (default flags and README's second XLA
configuration). A wrong window, weight or flip errs by a fraction of the logits.
"""

import chex
import jax
import numpy as np
import pytest
from flax import nnx

from ccnet_jax.evaluation.config import base_eval_config
from ccnet_jax.evaluation.inference import InferenceSettings, predict_logits, sliding_window_offsets
from tests import numerics, torch_reference
from tests.helpers import tiny_ccnet

torch = pytest.importorskip("torch")

NUM_CLASSES = 4
STRIDE = 8
FACTOR = 4
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
  """pooled_linear in numpy loops, in the images' dtype."""
  b, h, w, c = images.shape
  weights, bias = WEIGHTS.astype(images.dtype), BIAS.astype(images.dtype)
  out = np.zeros((b, h // STRIDE, w // STRIDE, NUM_CLASSES), images.dtype)
  for i in range(h // STRIDE):
    for j in range(w // STRIDE):
      patch = images[:, i * STRIDE : (i + 1) * STRIDE, j * STRIDE : (j + 1) * STRIDE]
      out[:, i, j] = patch.mean(axis=(1, 2)) @ weights + bias
  return out


def official_whole(image):
  _, height, width, _ = image.shape
  return torch_reference.resize_align_corners(pooled_linear_numpy(image), (height, width))


def official_multiscale(image, scales, flip, sliding_tile=None):
  _, height, width, _ = image.shape
  total = 0
  for scale in scales:
    size = (int(height * scale + 0.5), int(width * scale + 0.5))
    scaled = torch_reference.resize_align_corners(image, size)
    for flipped in (False, True) if flip else (False,):
      x = scaled[:, :, ::-1] if flipped else scaled
      if sliding_tile is None:
        logits = pooled_linear_numpy(x)
      else:
        logits = torch_reference.official_sliding(x, sliding_tile, pooled_linear_numpy)
      logits = torch_reference.resize_align_corners(logits, (height, width))
      total = total + (logits[:, :, ::-1] if flipped else logits)
  return total / (len(scales) * (2 if flip else 1))


def assert_as_accurate_as_official(actual, official, images):
  """``actual`` within FACTOR x the error of ``official`` run in float32, against float64."""
  chex.assert_shape(actual, images.shape[:3] + (NUM_CLASSES,))
  numerics.assert_as_accurate_as(
      np.asarray(actual), official(images), official(images.astype(np.float64)), factor=FACTOR
  )


def _images(shape, seed=1):
  return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def _predict(images, **settings):
  settings = InferenceSettings(**settings)
  fn = jax.jit(
      lambda x: predict_logits(pooled_linear, x, num_classes=NUM_CLASSES, settings=settings)
  )
  return fn(images)


@pytest.mark.numeric
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
  assert_as_accurate_as_official(
      actual, lambda x: torch_reference.official_sliding(x, crop, pooled_linear_numpy), images
  )


@pytest.mark.numeric
def test_whole_is_one_pass_upsampled():
  images = _images((2, 40, 56, 3))
  assert_as_accurate_as_official(_predict(images, mode="whole"), official_whole, images)


@pytest.mark.numeric
@pytest.mark.parametrize("mode", ["whole", "sliding"])
def test_multi_scale_flip_matches_official(mode):
  images = _images((1, 40, 56, 3))
  scales = (0.75, 1.0, 1.25)
  crop = (24, 32)
  actual = _predict(images, mode=mode, crop_size=crop, scales=scales, flip=True)
  tile = crop if mode == "sliding" else None
  assert_as_accurate_as_official(
      actual, lambda x: official_multiscale(x, scales, True, tile), images
  )


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


def _ccnet_logits(dtype, mode, images):
  graphdef, state = nnx.split(tiny_ccnet(dtype=dtype))
  settings = InferenceSettings(mode=mode, crop_size=(33, 41))
  apply_fn = lambda state, x: nnx.merge(graphdef, state)(x)[0]
  fn = jax.jit(
      lambda s, x: predict_logits(lambda y: apply_fn(s, y), x, num_classes=5, settings=settings)
  )
  return np.asarray(fn(state, images))


@pytest.mark.numeric
def test_ccnet_sliding_on_one_crop_equals_whole_image():
  # The same network on the same pixels: sliding may differ from whole only by float32
  # rounding, held to FACTOR x whole's own error against the network in float64.
  images = _images((1, 33, 41, 3))
  whole = _ccnet_logits("float32", "whole", images)
  assert float(np.std(whole)) > 0
  with jax.enable_x64(True):
    truth = _ccnet_logits("float64", "whole", images.astype(np.float64))
  numerics.assert_as_accurate_as(
      _ccnet_logits("float32", "sliding", images), whole, truth, factor=FACTOR
  )


def test_cityscapes_windows_are_the_official_eight():
  # stride ceil(769 * 2 / 3) = 513: rows 0, 255 (snapped); columns 0, 513, 1026, 1279 (snapped).
  expected = [(y, x) for y in (0, 255) for x in (0, 513, 1026, 1279)]
  assert sliding_window_offsets(1024, 2048, (769, 769), 1 / 3) == expected
  assert sliding_window_offsets(500, 700, (769, 769), 1 / 3) == [(0, 0)]
