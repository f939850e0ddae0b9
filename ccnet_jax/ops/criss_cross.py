"""Criss-cross attention as einsums: the reference implementation and the contract.

Every pixel (h, w) of an NHWC map attends to the H + W - 1 pixels on its row and
column. The column branch scores the H pixels of column w, the row branch the W
pixels of row h; the pixel itself appears in both, so it is masked out of the
column branch (the "diagonal mask") and one softmax runs jointly over both
branches. This module is what every other implementation (the memory-efficient
one, the Pallas kernels) is tested against.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array


def _check_inputs(q: Array, k: Array, v: Array) -> None:
  if q.ndim != 4 or k.ndim != 4 or v.ndim != 4:
    raise ValueError(
        "criss_cross_attention expects NHWC arrays of rank 4; got q"
        f" {q.shape}, k {k.shape}, v {v.shape}."
    )
  if q.shape != k.shape:
    raise ValueError(
        f"q and k must have the same shape (B, H, W, C'); got {q.shape} and" f" {k.shape}."
    )
  if q.shape[:3] != v.shape[:3]:
    raise ValueError(f"v must share (B, H, W) with q; got q {q.shape} and v {v.shape}.")


def criss_cross_energies(q: Array, k: Array) -> tuple[Array, Array]:
  """Masked float32 energies of both branches.

  Args:
    q: queries (B, H, W, C').
    k: keys (B, H, W, C').

  Returns:
    ``(e_col, e_row)`` of shapes (B, H, W, H) and (B, H, W, W):
    ``e_col[b, h, w, g] = <q[b, h, w], k[b, g, w]>`` with ``-inf`` where g == h,
    ``e_row[b, h, w, u] = <q[b, h, w], k[b, h, u]>``.
  """
  height = q.shape[1]
  accumulator = jnp.promote_types(q.dtype, jnp.float32)  # float64 stays float64.
  e_col = jnp.einsum("bhwc,bgwc->bhwg", q, k, preferred_element_type=accumulator)
  e_row = jnp.einsum("bhwc,bhuc->bhwu", q, k, preferred_element_type=accumulator)
  diagonal = jnp.eye(height, dtype=bool)[:, None, :]  # (H, 1, H): g == h
  e_col = jnp.where(diagonal, -jnp.inf, e_col)
  return e_col, e_row


def joint_softmax(e_col: Array, e_row: Array) -> tuple[Array, Array]:
  """One softmax over the concatenation [e_col, e_row] (last axis), without materialising it."""
  shift = jax.lax.stop_gradient(jnp.maximum(e_col.max(axis=-1), e_row.max(axis=-1)))[..., None]
  p_col = jnp.exp(e_col - shift)
  p_row = jnp.exp(e_row - shift)
  denominator = p_col.sum(axis=-1, keepdims=True) + p_row.sum(axis=-1, keepdims=True)
  return p_col / denominator, p_row / denominator


def criss_cross_attention(
    q: Array, k: Array, v: Array, *, return_attention: bool = False
) -> Array | tuple[Array, Array]:
  """Aggregates v over each pixel's row and column, weighted by one joint softmax.

  Args:
    q: queries (B, H, W, C').
    k: keys (B, H, W, C').
    v: values (B, H, W, C).
    return_attention: also return the attention weights.

  Returns:
    The context (B, H, W, C) in v's dtype -- without the learned scale gamma and
    without the residual, which belong to the module. With ``return_attention``,
    also the float32 weights (B, H, W, H + W): the first H entries weigh the
    column (entry h, the pixel itself, is 0), the last W entries weigh the row.
    They sum to 1 over the last axis.
  """
  _check_inputs(q, k, v)
  a_col, a_row = joint_softmax(*criss_cross_energies(q, k))
  accumulator = jnp.promote_types(v.dtype, jnp.float32)
  context = jnp.einsum(
      "bhwg,bgwc->bhwc", a_col.astype(v.dtype), v, preferred_element_type=accumulator
  ) + jnp.einsum("bhwu,bhuc->bhwc", a_row.astype(v.dtype), v, preferred_element_type=accumulator)
  context = context.astype(v.dtype)
  if return_attention:
    return context, jnp.concatenate([a_col, a_row], axis=-1)
  return context
