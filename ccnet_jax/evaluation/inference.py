"""Whole-image, sliding-window and multi-scale + flip inference, as in CCNet's evaluate.py.

Everything is traced once under jit: the scales and flips are static Python loops, and
the sliding windows are a ``lax.scan`` over static tile offsets, so the network appears
once per (scale, flip) in the compiled program however many tiles there are, and only
one full-resolution logits canvas is live at a time.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ccnet_jax.ops.resize import resize_bilinear

ApplyFn = Callable[[jax.Array], jax.Array]

MODES = ("whole", "sliding")


@dataclasses.dataclass(frozen=True)
class InferenceSettings:
  """How the logits of an image are computed; checked once, when the value is made.

  mode: 'whole' (one pass per scale) or 'sliding' (windows of ``crop_size`` (height, width),
  each sharing ``overlap`` of its size with its neighbour). scales: image scales whose
  predictions are averaged; each is resized bilinearly (align_corners=True, like the official
  ndimage.zoom). flip: also predict the mirrored image, mirrored back. align_corners: the
  convention of the logits' upsampling.
  """

  mode: str = "whole"
  crop_size: tuple[int, int] = (769, 769)
  overlap: float = 1 / 3
  scales: tuple[float, ...] = (1.0,)
  flip: bool = False
  align_corners: bool = True

  def __post_init__(self):
    if self.mode not in MODES:
      raise ValueError(f"mode={self.mode!r} must be one of {MODES}.")
    crop_size = tuple(int(c) for c in self.crop_size)
    if len(crop_size) != 2 or min(crop_size) < 1:
      raise ValueError(f"crop_size={crop_size} must be two positive sizes (height, width).")
    if not 0 <= float(self.overlap) < 1:
      raise ValueError(f"overlap={self.overlap!r} must be in [0, 1).")
    scales = tuple(float(scale) for scale in self.scales)
    if not scales or min(scales) <= 0:
      raise ValueError(f"scales={scales} must be one or more positive scales.")
    for name, value in (
        ("crop_size", crop_size),
        ("overlap", float(self.overlap)),
        ("scales", scales),
        ("flip", bool(self.flip)),
        ("align_corners", bool(self.align_corners)),
    ):
      object.__setattr__(self, name, value)

  @classmethod
  def from_config(cls, eval_config: Any) -> InferenceSettings:
    """The settings of an ``eval`` config section; an error names its field (``eval.mode``)."""
    fields = {field.name: eval_config[field.name] for field in dataclasses.fields(cls)}
    try:
      return cls(**fields)
    except ValueError as error:
      raise ValueError(f"eval.{error}") from None


def scaled_size_half_up(height: int, width: int, scale: float) -> tuple[int, int]:
  """The image size at ``scale``, rounded half up (at least one pixel)."""
  return max(int(height * scale + 0.5), 1), max(int(width * scale + 0.5), 1)


def sliding_window_offsets(
    height: int, width: int, crop_size: Sequence[int], overlap: float
) -> list[tuple[int, int]]:
  """Top-left corners (y0, x0) of the official CCNet sliding windows, row-major.

  stride = ceil(crop * (1 - overlap)) per axis; ceil((H - crop) / stride) + 1 rows (at
  least one); the last row and column are snapped to the bottom/right border. With an
  image smaller than the crop the single window starts at 0 and is zero-padded.
  """
  offsets_per_axis = []
  for size, crop in ((height, crop_size[0]), (width, crop_size[1])):
    stride = int(math.ceil(crop * (1 - overlap)))
    count = max(int(math.ceil((size - crop) / stride)) + 1, 1)
    starts = []
    for index in range(count):
      end = min(index * stride + crop, size)
      starts.append(max(end - crop, 0))
    offsets_per_axis.append(starts)
  return [(y0, x0) for y0 in offsets_per_axis[0] for x0 in offsets_per_axis[1]]


def sliding_window_counts(
    height: int, width: int, crop_size: Sequence[int], overlap: float
) -> np.ndarray:
  """(H, W) float32: how many windows cover each pixel (at least 1)."""
  counts = np.zeros((height, width), np.float32)
  for y0, x0 in sliding_window_offsets(height, width, crop_size, overlap):
    counts[y0 : y0 + crop_size[0], x0 : x0 + crop_size[1]] += 1
  return counts


def _check_logits(logits: jax.Array, images: jax.Array, num_classes: int) -> jax.Array:
  if logits.ndim != 4 or logits.shape[0] != images.shape[0] or logits.shape[-1] != num_classes:
    raise ValueError(
        f"apply_fn returned {logits.shape} for images {images.shape}; expected (B, h, w, "
        f"num_classes={num_classes}) NHWC logits (the model's main output only)."
    )
  return logits.astype(jnp.float32)


def predict_whole(
    apply_fn: ApplyFn,
    images: jax.Array,
    *,
    num_classes: int,
    output_size: Sequence[int] | None = None,
    align_corners: bool = True,
) -> jax.Array:
  """One forward pass, logits upsampled bilinearly to ``output_size`` (default: image size)."""
  output_size = tuple(output_size or images.shape[1:3])
  logits = _check_logits(apply_fn(images), images, num_classes)
  return resize_bilinear(logits, output_size, align_corners=align_corners)


def predict_sliding(
    apply_fn: ApplyFn,
    images: jax.Array,
    *,
    num_classes: int,
    crop_size: Sequence[int] = (769, 769),
    overlap: float = 1 / 3,
    align_corners: bool = True,
) -> jax.Array:
  """Average of the windows' logits (each upsampled to the crop), at the image size."""
  batch, height, width, channels = images.shape
  crop_height, crop_width = int(crop_size[0]), int(crop_size[1])
  padded_height, padded_width = max(height, crop_height), max(width, crop_width)
  # Zero padding bottom/right: the official pad_image, done once for the whole image.
  padded = jnp.pad(images, ((0, 0), (0, padded_height - height), (0, padded_width - width), (0, 0)))
  offsets = sliding_window_offsets(height, width, crop_size, overlap)

  def add_window(canvas, offset):
    y0, x0 = offset[0], offset[1]
    tile = jax.lax.dynamic_slice(padded, (0, y0, x0, 0), (batch, crop_height, crop_width, channels))
    logits = predict_whole(apply_fn, tile, num_classes=num_classes, align_corners=align_corners)
    window = jax.lax.dynamic_slice(
        canvas, (0, y0, x0, 0), (batch, crop_height, crop_width, num_classes)
    )
    return jax.lax.dynamic_update_slice(canvas, window + logits, (0, y0, x0, 0)), None

  # Zeros derived from the input keep its batch sharding (scan needs a fixed carry type).
  canvas = jnp.zeros_like(padded[..., :1], jnp.float32) + jnp.zeros((num_classes,), jnp.float32)
  canvas, _ = jax.lax.scan(add_window, canvas, jnp.asarray(offsets, jnp.int32))
  counts = sliding_window_counts(height, width, crop_size, overlap)
  return canvas[:, :height, :width] / jnp.asarray(counts)[None, :, :, None]


def predict_logits(
    apply_fn: ApplyFn,
    images: jax.Array,
    *,
    num_classes: int,
    settings: InferenceSettings = InferenceSettings(),
) -> jax.Array:
  """(B, H, W, K) float32 logits at the image size, averaged over scales and flips.

  Args:
    apply_fn: NHWC images -> NHWC logits at the network's output stride.
    images: (B, H, W, 3) normalised images.
    num_classes: K, the logits' channels.
    settings: whole image or sliding windows, scales, flip (see :class:`InferenceSettings`).
  """
  if images.ndim != 4:
    raise ValueError(f"images must be (B, H, W, C), got shape {images.shape}.")
  mode, crop_size, overlap = settings.mode, settings.crop_size, settings.overlap
  scales, flip, align_corners = settings.scales, settings.flip, settings.align_corners
  height, width = images.shape[1:3]
  total, passes = None, 0
  for scale in scales:
    size = scaled_size_half_up(height, width, float(scale))
    scaled = resize_bilinear(images, size, align_corners=True)
    for flipped in (False, True) if flip else (False,):
      inputs = scaled[:, :, ::-1] if flipped else scaled
      if mode == "whole":
        logits = predict_whole(
            apply_fn,
            inputs,
            num_classes=num_classes,
            output_size=(height, width),
            align_corners=align_corners,
        )
      else:
        logits = predict_sliding(
            apply_fn,
            inputs,
            num_classes=num_classes,
            crop_size=crop_size,
            overlap=overlap,
            align_corners=align_corners,
        )
        logits = resize_bilinear(logits, (height, width), align_corners=align_corners)
      logits = logits[:, :, ::-1] if flipped else logits
      total = logits if total is None else total + logits
      passes += 1
  return total / passes
