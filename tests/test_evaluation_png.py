"""Prediction PNGs: colours from the palette, overlays, the files written."""

import os

import numpy as np
from PIL import Image

from ccnet_jax.evaluation.png import colorize, overlay, save_predictions

PALETTE = np.array(
    [[128, 64, 128], [244, 35, 232], [70, 70, 70], [220, 20, 60], [0, 0, 142]], np.uint8
)
NUM_CLASSES = len(PALETTE)


def test_colorize_uses_the_palette_and_blacks_out_ignore():
  labels = np.random.default_rng(0).integers(0, NUM_CLASSES, size=(6, 7))
  labels[0, :3] = 255
  color = colorize(labels, PALETTE)
  assert color.dtype == np.uint8 and color.shape == (6, 7, 3)
  for y in range(6):
    for x in range(7):
      expected = [0, 0, 0] if labels[y, x] == 255 else PALETTE[labels[y, x]]
      np.testing.assert_array_equal(color[y, x], expected)


def test_overlay_blends_with_alpha():
  rgb = np.random.default_rng(1).integers(0, 256, size=(4, 5, 3)).astype(np.uint8)
  white = np.full_like(rgb, 255)
  np.testing.assert_array_equal(
      overlay(rgb, white, alpha=0.25), np.round(0.75 * rgb + 0.25 * 255).astype(np.uint8)
  )


def test_save_predictions_writes_readable_pngs(tmp_path):
  rng = np.random.default_rng(2)
  image = rng.integers(0, 256, size=(6, 8, 3)).astype(np.uint8)
  prediction = rng.integers(0, NUM_CLASSES, size=(6, 8))
  label = rng.integers(0, NUM_CLASSES, size=(6, 8))
  paths = save_predictions(str(tmp_path), "city/frame_1", image, prediction, label, PALETTE)
  assert sorted(os.path.basename(p) for p in paths) == [
      "city_frame_1_gt.png",
      "city_frame_1_overlay.png",
      "city_frame_1_pred.png",
  ]
  np.testing.assert_array_equal(
      np.asarray(Image.open(tmp_path / "city_frame_1_pred.png")), colorize(prediction, PALETTE)
  )
  np.testing.assert_array_equal(
      np.asarray(Image.open(tmp_path / "city_frame_1_gt.png")), colorize(label, PALETTE)
  )
  assert np.asarray(Image.open(tmp_path / "city_frame_1_overlay.png")).shape == (6, 8, 3)
