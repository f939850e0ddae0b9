"""Prediction PNGs: colour-coded label maps, overlays on the input image."""

from __future__ import annotations

import os

import numpy as np
from PIL import Image

from ccnet_jax import atomic


def colorize(label_map: np.ndarray, palette: np.ndarray) -> np.ndarray:
  """(H, W) class ids -> (H, W, 3) uint8 colours; ignore (255) and unknown ids are black."""
  label_map = np.asarray(label_map)
  palette = np.asarray(palette, np.uint8)
  if palette.ndim != 2 or palette.shape[1] != 3:
    raise ValueError(f"palette must be (num_classes, 3) uint8, got shape {palette.shape}.")
  known = (label_map >= 0) & (label_map < len(palette))
  color = palette[np.where(known, label_map, 0)]
  color[~known] = 0
  return color


def overlay(image: np.ndarray, color: np.ndarray, alpha: float = 0.5) -> np.ndarray:
  """(1 - alpha) * image + alpha * color, rounded to uint8."""
  if image.shape != color.shape:
    raise ValueError(f"image {image.shape} and colour map {color.shape} must have one shape.")
  blended = (1 - alpha) * image.astype(np.float32) + alpha * color.astype(np.float32)
  return np.clip(np.round(blended), 0, 255).astype(np.uint8)


def save_predictions(
    out_dir: str,
    name: str,
    image_uint8: np.ndarray,
    prediction: np.ndarray,
    label: np.ndarray | None,
    palette: np.ndarray,
) -> list[str]:
  """Writes ``<name>_pred.png``, ``<name>_overlay.png`` and ``<name>_gt.png`` (each whole or not
  at all, see ``ccnet_jax.atomic``); returns their paths.

  Slashes in ``name`` (Cityscapes ids such as 'frankfurt/frankfurt_000000_000294')
  become underscores, so every file lands directly in ``out_dir``.
  """
  os.makedirs(out_dir, exist_ok=True)
  stem = os.path.join(out_dir, name.replace("/", "_").replace(os.sep, "_"))
  color = colorize(prediction, palette)
  images = {"pred": color, "overlay": overlay(image_uint8, color)}
  if label is not None:
    images["gt"] = colorize(label, palette)
  paths = []
  for suffix, array in images.items():
    path = f"{stem}_{suffix}.png"
    save_png(path, array)
    paths.append(path)
  return paths


def save_png(path: str, array: np.ndarray) -> None:
  """``array`` as a PNG at ``path``, written whole or not at all."""
  with atomic.writing(path) as temporary:
    Image.fromarray(array).save(temporary, format="PNG")
