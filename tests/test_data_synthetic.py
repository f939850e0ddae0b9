"""The synthetic long-range dataset: determinism and the scene rules, checked from the pixels."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from ccnet_jax.data.synthetic import SyntheticLongRange, stripe_height


def test_deterministic_and_distinct():
  first, again = SyntheticLongRange(8, 64, seed=3), SyntheticLongRange(8, 64, seed=3)
  for i in range(4):
    np.testing.assert_array_equal(first[i]["image"], again[i]["image"])
    np.testing.assert_array_equal(first[i]["label"], again[i]["label"])
  assert not np.array_equal(first[0]["image"], first[1]["image"])
  assert not np.array_equal(first[0]["image"], SyntheticLongRange(8, 64, seed=4)[0]["image"])
  evaluation = SyntheticLongRange(8, 64, seed=3, start_index=8)
  assert evaluation[0]["name"] != first[0]["name"]
  with pytest.raises(IndexError):
    first[8]


@pytest.mark.parametrize("image_size", [64, (96, 40)])
def test_scene_rules(image_size):
  source = SyntheticLongRange(40, image_size, seed=0)
  height, width = (image_size, image_size) if isinstance(image_size, int) else image_size
  top = stripe_height(height)
  seen = set()
  shape_means = {}
  for i in range(len(source)):
    example = source[i]
    image, label = example["image"], example["label"]
    assert image.shape == (height, width, 3) and image.dtype == np.uint8
    assert label.shape == (height, width) and label.dtype == np.uint8
    assert set(np.unique(label)) <= {0, 1, 2, 3, 4, 5, 255}
    assert np.all(label[:top] == 1)
    cue = int(np.argmax(image[:top].reshape(-1, 3).mean(0)))  # red, green or blue stripe
    shape_pixels = np.isin(label, (2, 3, 4))
    assert shape_pixels.any()
    assert set(np.unique(label[shape_pixels])) == {2 + cue}
    # Shapes sit in the lower half, far from the stripe that decides their class.
    assert np.nonzero(shape_pixels)[0].min() >= height // 2 - 1
    shape_means.setdefault(cue, []).append(image[shape_pixels].mean(0))
    # Every shape is separated from the background by an ignored ring.
    grown = ndimage.binary_dilation(shape_pixels)
    assert np.all(np.isin(label[grown & ~shape_pixels], (2, 3, 4, 5, 255)))
    seen |= set(np.unique(label).tolist())
  assert seen == {0, 1, 2, 3, 4, 5, 255}
  # Shapes of the three classes look alike: the same mean colour up to noise.
  means = np.array([np.mean(shape_means[c], 0) for c in range(3)])
  assert np.abs(means - means.mean(0)).max() < 3.0


def test_bad_image_size():
  with pytest.raises(ValueError, match="data.synthetic.image_size"):
    SyntheticLongRange(4, 8, seed=0)
  with pytest.raises(ValueError, match="data.synthetic.image_size"):
    SyntheticLongRange(4, (64, 64, 3), seed=0)
