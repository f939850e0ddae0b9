"""Preprocessing: the normalisation against a float64 formula, its inverse, JSON and config."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from ccnet_jax.models.preprocessing import IMAGENET, OFFICIAL, Preprocessing

IMAGE = np.random.default_rng(0).integers(0, 256, (2, 5, 7, 3)).astype(np.uint8)


def reference(images, channel_order, mean, std):
  """float64 ``(x - mean) / std`` after reordering the channels of RGB images."""
  x = np.asarray(images, np.float64)
  if channel_order == "bgr":
    x = x[..., ::-1]
  return (x - np.asarray(mean)) / np.asarray(std)


def float32_bound(preprocessing):
  """float32 rounds the mean, the std, the difference and the quotient (XLA may divide by
  multiplying with a rounded reciprocal): each within 2^-24 of a value at most
  (255 + mean) / std, so four of those bound the error."""
  return 4 * 2.0**-24 * (255 + max(preprocessing.mean)) / min(preprocessing.std)


@pytest.mark.parametrize("preprocessing", [IMAGENET, OFFICIAL], ids=["imagenet", "official"])
def test_normalize_numpy_and_jitted_jax_against_float64(preprocessing):
  want = reference(IMAGE, preprocessing.channel_order, preprocessing.mean, preprocessing.std)
  got = preprocessing.normalize(IMAGE)
  assert isinstance(got, np.ndarray) and got.dtype == np.float32
  np.testing.assert_allclose(got, want, rtol=0, atol=float32_bound(preprocessing))
  traced = jax.jit(lambda x: preprocessing.normalize(x))(jnp.asarray(IMAGE))
  assert isinstance(traced, jax.Array) and traced.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(traced), want, rtol=0, atol=float32_bound(preprocessing))


def test_a_static_argument_of_jit():
  normalize = jax.jit(lambda x, p: p.normalize(x), static_argnums=1)
  np.testing.assert_array_equal(np.asarray(normalize(IMAGE, OFFICIAL)), OFFICIAL.normalize(IMAGE))


@pytest.mark.parametrize("preprocessing", [IMAGENET, OFFICIAL], ids=["imagenet", "official"])
def test_denormalize_returns_the_uint8_image(preprocessing):
  restored = preprocessing.denormalize(preprocessing.normalize(IMAGE))
  assert restored.dtype == np.uint8
  np.testing.assert_array_equal(restored, IMAGE)


@pytest.mark.parametrize("preprocessing", [IMAGENET, OFFICIAL], ids=["imagenet", "official"])
def test_rgb_values_invert_normalize_without_rounding(preprocessing):
  """Resized images are not integers: the float inverse must give them back, not round them."""
  rgb = np.random.default_rng(1).uniform(0, 255, (2, 5, 7, 3))
  restored = preprocessing.rgb_values(preprocessing.normalize(rgb))
  assert restored.dtype == np.float32
  # The normalisation's error, scaled back by std, and the product's and sum's own rounding.
  bound = float32_bound(preprocessing) * max(preprocessing.std) + 2 * 2.0**-24 * 255
  np.testing.assert_allclose(restored, rgb, rtol=0, atol=bound)


def test_json_and_config_forms():
  assert Preprocessing.from_json(OFFICIAL.to_json()) == OFFICIAL
  assert OFFICIAL.to_json() == {
      "channel_order": "bgr",
      "mean": [104.00698793, 116.66876762, 122.67891434],
      "std": [1.0, 1.0, 1.0],
  }
  data = ml_collections.ConfigDict({"channel_order": "RGB", "mean": (1, 2, 3), "std": [4, 5, 6]})
  assert Preprocessing.from_config(data) == Preprocessing("rgb", (1.0, 2.0, 3.0), (4.0, 5.0, 6.0))


@pytest.mark.parametrize(
    "fields, message",
    [
        (("hsv", (0, 0, 0), (1, 1, 1)), "channel_order='hsv'"),
        (("rgb", (0, 0), (1, 1, 1)), "mean=.* three values"),
        (("rgb", (0, 0, 0), (1, 0, 1)), "std=.* positive"),
    ],
)
def test_bad_values_are_named(fields, message):
  with pytest.raises(ValueError, match=message):
    Preprocessing(*fields)


def test_missing_json_fields_are_named():
  with pytest.raises(ValueError, match=r"lacks \['std'\]"):
    Preprocessing.from_json({"channel_order": "rgb", "mean": (0, 0, 0)})
