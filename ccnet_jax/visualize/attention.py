"""Where a pixel looks: its criss-cross attention weights, one loop and all R loops composed.

Loop 1 lets a pixel read its own row and column. Loop 2 reads the outputs of loop 1, each
of which already gathered its own row and column, so through the two loops a pixel reaches
every pixel of the map. The effective weights of R loops are the product of the loops'
attention matrices, ``A_R @ ... @ A_1`` (the paper's Figure 3 argument); like each loop's
weights they are non-negative and sum to 1. They follow the attention alone: the residual
connections and the value projections, which the network also applies, are left out.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Sequence

import jax
import numpy as np
from flax import nnx
from PIL import Image, ImageDraw

from ccnet_jax.data.images import read_image
from ccnet_jax.data.labels import dataset_for_model
from ccnet_jax.evaluation.inference import predict_logits
from ccnet_jax.evaluation.png import colorize, overlay, save_png
from ccnet_jax.loading import load_model
from ccnet_jax.models.preprocessing import Preprocessing
from ccnet_jax.ops.resize import interpolation_matrix

# A dark-to-bright heat scale (black, purple, red, orange, pale yellow) for weights 0..1.
_HEAT_STOPS = np.array(
    [(0, 0, 4), (87, 16, 110), (188, 55, 84), (249, 142, 9), (252, 255, 164)], np.float32
)
HEAT_DECADES = 4.0  # The heat scale spans weights from 1e-4 of a map's maximum to it.
_GAP = 4  # White pixels between the panels of a figure.
_MARKER = (0, 255, 255)


@dataclasses.dataclass(frozen=True)
class PixelAttention:
  """One pixel's attention on the network's output grid (h, w); each map sums to 1."""

  pixel: tuple[int, int]  # (y, x) in the image.
  grid_pixel: tuple[int, int]  # (y, x) on the attention grid.
  loop1: np.ndarray  # (h, w): the first loop's weights, zero off the pixel's row and column.
  effective: np.ndarray  # (h, w): the weights through all R loops composed.


def spread(weights: np.ndarray, attention: np.ndarray) -> np.ndarray:
  """Weights over one loop's output pixels -> the weights over the input pixels they read.

  Args:
    weights: (h, w), how much each output pixel (query) of the loop counts.
    attention: (h, w, h + w), the loop's criss-cross weights: query (g, v) reads
      (k, v) of its column with ``attention[g, v, k]`` and (g, u) of its row with
      ``attention[g, v, h + u]``.
  """
  height = weights.shape[0]
  column, row = attention[..., :height], attention[..., height:]
  return np.einsum("gv,gvk->kv", weights, column) + np.einsum("gv,gvu->gu", weights, row)


def grid_position(pixel: Sequence[int], image_size: Sequence[int], grid_size: Sequence[int]):
  """The grid cell nearest to an image pixel, with the logits' align-corners upsampling."""
  return tuple(
      int(round(p * (g - 1) / (s - 1))) if s > 1 else 0
      for p, s, g in zip(pixel, image_size, grid_size)
  )


def pixel_attention(
    attention_per_loop: Sequence[np.ndarray], pixel: Sequence[int], image_size: Sequence[int]
) -> PixelAttention:
  """Loop-1 and effective weights of an image pixel from each loop's (h, w, h + w) weights."""
  height, width = attention_per_loop[0].shape[:2]
  y, x = grid_position(pixel, image_size, (height, width))
  start = np.zeros((height, width), np.float64)
  start[y, x] = 1.0
  loops = [np.asarray(a, np.float64) for a in attention_per_loop]
  effective = start
  for attention in reversed(loops):  # The last loop reads what the earlier ones wrote.
    effective = spread(effective, attention)
  return PixelAttention(tuple(int(p) for p in pixel), (y, x), spread(start, loops[0]), effective)


def parse_pixel(text: str) -> tuple[int, int]:
  """'Y,X' -> (y, x)."""
  try:
    y, x = (int(part) for part in text.split(","))
  except ValueError:
    raise ValueError(f"--pixel={text!r} must be two integers Y,X (row, column).") from None
  return y, x


def check_pixels(pixels: Sequence[Sequence[int]], image_size: Sequence[int]) -> None:
  if not pixels:
    raise ValueError("Give at least one --pixel=Y,X.")
  for y, x in pixels:
    if not (0 <= y < image_size[0] and 0 <= x < image_size[1]):
      raise ValueError(
          f"--pixel={y},{x} lies outside the {image_size[0]}x{image_size[1]} image"
          f" (rows 0..{image_size[0] - 1}, columns 0..{image_size[1] - 1})."
      )


def model_attention(
    model: nnx.Module, image: np.ndarray, preprocessing: Preprocessing, num_classes: int
) -> tuple[np.ndarray, list[np.ndarray]]:
  """(prediction (H, W), each loop's (h, w, h + w) weights) of a CCNet on one uint8 image."""
  graphdef, state = nnx.split(model)

  @jax.jit
  def run(state, images):
    network = nnx.merge(graphdef, state, copy=True)
    network.eval()
    logits = predict_logits(lambda x: network(x)[0], images, num_classes=num_classes)
    return logits.argmax(-1), network.attention_maps(images)

  labels, maps = run(state, preprocessing.normalize(image)[None])
  return np.asarray(labels[0]), [np.asarray(a[0]) for a in maps]


def upsample(grid_map: np.ndarray, size: Sequence[int]) -> np.ndarray:
  """Bilinear (align-corners, as the logits) resize of an (h, w) map to the image size."""
  rows = interpolation_matrix(grid_map.shape[0], size[0], align_corners=True)
  cols = interpolation_matrix(grid_map.shape[1], size[1], align_corners=True)
  return rows @ grid_map @ cols.T


def heat(values: np.ndarray, decades: float = HEAT_DECADES) -> np.ndarray:
  """(H, W) weights -> (H, W, 3) uint8 on the heat scale, logarithmic over ``decades``
  below the map's maximum: the faint weights through which a second loop reaches the
  whole image stay visible beside the strong ones."""
  top = float(values.max())
  relative = np.maximum(values / top, 1e-30) if top > 0 else np.full(values.shape, 1e-30)
  scaled = np.clip(1 + np.log10(relative) / decades, 0, 1)
  position = scaled * (len(_HEAT_STOPS) - 1)
  low = np.minimum(np.floor(position).astype(int), len(_HEAT_STOPS) - 2)
  fraction = (position - low)[..., None]
  colors = _HEAT_STOPS[low] * (1 - fraction) + _HEAT_STOPS[low + 1] * fraction
  return np.round(colors).astype(np.uint8)


def _mark(panel: np.ndarray, pixel: Sequence[int]) -> np.ndarray:
  canvas = Image.fromarray(panel)
  y, x = pixel
  radius = max(2, min(panel.shape[:2]) // 40)
  ImageDraw.Draw(canvas).ellipse(
      (x - radius, y - radius, x + radius, y + radius), outline=_MARKER, width=1
  )
  return np.asarray(canvas)


def _row(panels: Sequence[np.ndarray]) -> np.ndarray:
  gap = np.full((panels[0].shape[0], _GAP, 3), 255, np.uint8)
  pieces = [piece for panel in panels for piece in (panel, gap)][:-1]
  return np.concatenate(pieces, axis=1)


def attention_figure(
    image: np.ndarray,
    prediction: np.ndarray,
    palette: np.ndarray,
    maps: Sequence[PixelAttention],
    alpha: float = 0.7,
) -> np.ndarray:
  """One row per pixel: image, loop-1 weights, effective weights (both on the image, the
  pixel circled), the colourised prediction. uint8 (rows, columns, 3)."""
  size = image.shape[:2]
  prediction_panel = colorize(prediction, palette)
  rows = []
  for item in maps:
    panels = [_mark(image, item.pixel)]
    for weights in (item.loop1, item.effective):
      panels.append(_mark(overlay(image, heat(upsample(weights, size)), alpha), item.pixel))
    panels.append(prediction_panel)
    rows.append(_row(panels))
  gap = np.full((_GAP, rows[0].shape[1], 3), 255, np.uint8)
  pieces = [piece for row in rows for piece in (row, gap)][:-1]
  return np.concatenate(pieces, axis=0)


def image_attention(
    model: str,
    image: np.ndarray,
    pixels: Sequence[Sequence[int]],
    *,
    dataset: str | None = None,
) -> tuple[np.ndarray, list[PixelAttention], np.ndarray]:
  """(prediction, each pixel's maps, the figure) of a saved model on a uint8 RGB image.

  ``model`` is a model directory or a training workdir (see ``ccnet_jax.loading``);
  ``dataset`` picks the palette (default: the known dataset with the model's class count).
  """
  check_pixels(pixels, image.shape[:2])
  loaded = load_model(model)
  palette = dataset_for_model(loaded.num_classes, dataset).palette
  prediction, loops = model_attention(loaded.model, image, loaded.preprocessing, loaded.num_classes)
  maps = [pixel_attention(loops, pixel, image.shape[:2]) for pixel in pixels]
  return prediction, maps, attention_figure(image, prediction, palette, maps)


def save_attention(
    model: str,
    image_path: str,
    pixels: Sequence[Sequence[int]],
    out_dir: str,
    *,
    dataset: str | None = None,
) -> str:
  """Writes ``out_dir/<image name>_attention.png`` (see :func:`attention_figure`); its path."""
  _, _, figure = image_attention(model, read_image(image_path), pixels, dataset=dataset)
  stem = os.path.splitext(os.path.basename(image_path))[0]
  path = os.path.join(out_dir, f"{stem}_attention.png")
  save_png(path, figure)
  return path
