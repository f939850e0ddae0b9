"""Bilinear resizing of NHWC maps with PyTorch's ``align_corners`` semantics.

The official CCNet upsamples logits with ``align_corners=True`` (in the loss and at
inference), mmsegmentation with ``False``; ``jax.image.resize`` offers only the
latter (and antialiases when shrinking). Interpolation here is two small dense
matrices, one per spatial axis: exact for both conventions, differentiable, and a
pair of matmuls that XLA runs well on every backend.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def interpolation_matrix(in_size: int, out_size: int, *, align_corners: bool) -> np.ndarray:
  """The (out_size, in_size) float64 matrix of 1-D linear interpolation, as torch computes it."""
  out = np.arange(out_size, dtype=np.float64)
  if align_corners:
    scale = (in_size - 1) / (out_size - 1) if out_size > 1 else 0.0
    source = out * scale
  else:
    source = np.maximum((out + 0.5) * (in_size / out_size) - 0.5, 0.0)
  lower = np.minimum(np.floor(source).astype(np.int64), in_size - 1)
  upper = np.minimum(lower + 1, in_size - 1)
  weight_upper = source - lower
  matrix = np.zeros((out_size, in_size), np.float64)
  np.add.at(matrix, (np.arange(out_size), lower), 1.0 - weight_upper)
  np.add.at(matrix, (np.arange(out_size), upper), weight_upper)
  return matrix


def resize_bilinear(
    x: jax.Array, size: tuple[int, int], *, align_corners: bool = True
) -> jax.Array:
  """Resizes (B, H, W, C) to (B, size[0], size[1], C) in float32 or x's wider dtype."""
  height, width = x.shape[1:3]
  if (height, width) == tuple(size):
    return x
  dtype = jnp.promote_types(x.dtype, jnp.float32)
  rows = jnp.asarray(interpolation_matrix(height, size[0], align_corners=align_corners), dtype)
  cols = jnp.asarray(interpolation_matrix(width, size[1], align_corners=align_corners), dtype)
  return jnp.einsum(
      "oh,bhwc,pw->bopc", rows, x.astype(dtype), cols, precision=jax.lax.Precision.HIGHEST
  )
