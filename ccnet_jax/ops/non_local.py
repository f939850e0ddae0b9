"""Embedded-Gaussian non-local attention: the dense baseline the paper compares with.

Same calling convention as :func:`ccnet_jax.ops.criss_cross.criss_cross_attention`,
but every pixel attends to all H * W pixels, so energies cost O((HW)^2).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array


def non_local_attention(
    q: Array, k: Array, v: Array, *, return_attention: bool = False
) -> Array | tuple[Array, Array]:
  """softmax(q k^T) v over all positions, softmax in float32.

  Takes q, k (B, H, W, C') and v (B, H, W, C) as ``criss_cross_attention`` does and returns
  the context (B, H, W, C) in v's dtype, without gamma and residual; with
  ``return_attention`` also the (B, H, W, H, W) float32 weights.
  """
  if q.ndim != 4 or q.shape != k.shape or q.shape[:3] != v.shape[:3]:
    raise ValueError(
        "non_local_attention expects q, k of shape (B, H, W, C') and v of shape"
        f" (B, H, W, C); got q {q.shape}, k {k.shape}, v {v.shape}."
    )
  energies = jnp.einsum("bhwc,bguc->bhwgu", q, k, preferred_element_type=jnp.float32)
  batch, height, width = q.shape[:3]
  flat = energies.reshape(batch, height, width, height * width)
  attention = jax.nn.softmax(flat, axis=-1).reshape(energies.shape)
  context = jnp.einsum(
      "bhwgu,bguc->bhwc",
      attention.astype(v.dtype),
      v,
      preferred_element_type=jnp.float32,
  ).astype(v.dtype)
  if return_attention:
    return context, attention
  return context
