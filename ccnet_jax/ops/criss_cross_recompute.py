"""Criss-cross attention whose backward pass recomputes the attention weights.

The einsum path keeps the (B, H, W, H + W) energies and weights of every
recurrence for the backward pass. Here the residuals are q, k, v, the output
(which the module keeps anyway for gamma's gradient) and the (B, H, W) joint
log-sum-exp; the backward recomputes the energies once and derives the weights
as exp(e - lse), as flash attention does, without a second forward pass. At
97 x 97 x 512 the value-sized (B, H, W, C) buffers outweigh the attention-sized
ones (H + W = 194 < C), so the training-step saving is modest (see
benchmarks/cca_kernels.py).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ccnet_jax.ops.criss_cross import _check_inputs, criss_cross_energies

Array = jax.Array


def _aggregate(a_col: Array, a_row: Array, v: Array) -> Array:
  """sum_g a_col[b,h,w,g] v[b,g,w] + sum_u a_row[b,h,w,u] v[b,h,u], in float32."""
  return jnp.einsum(
      "bhwg,bgwc->bhwc", a_col.astype(v.dtype), v, preferred_element_type=jnp.float32
  ) + jnp.einsum("bhwu,bhuc->bhwc", a_row.astype(v.dtype), v, preferred_element_type=jnp.float32)


def _forward(q: Array, k: Array, v: Array) -> tuple[Array, Array]:
  e_col, e_row = criss_cross_energies(q, k)
  lse = jnp.logaddexp(jax.nn.logsumexp(e_col, axis=-1), jax.nn.logsumexp(e_row, axis=-1))
  lse = jax.lax.stop_gradient(lse)
  a_col = jnp.exp(e_col - lse[..., None])
  a_row = jnp.exp(e_row - lse[..., None])
  return _aggregate(a_col, a_row, v).astype(v.dtype), lse


@jax.custom_vjp
def _criss_cross(q: Array, k: Array, v: Array) -> Array:
  return _forward(q, k, v)[0]


def _criss_cross_fwd(q, k, v):
  out, lse = _forward(q, k, v)
  return out, (q, k, v, out, lse)


def _axial_bwd(q, k, v, g, lse, delta, mask_diagonal):
  """One branch's float32 (dq, dk, dv) with its sequences along axis 2.

  Rows are already laid out so; the column branch runs on transposed maps, which
  keeps the batch dims of every product leading (no per-product transposes).
  """
  f32 = jnp.float32
  e = jnp.einsum("bhwc,bhuc->bhwu", q, k, preferred_element_type=f32)
  if mask_diagonal:
    e = jnp.where(jnp.eye(q.shape[2], dtype=bool), -jnp.inf, e)
  a = jnp.exp(e - lse[..., None])  # This branch's share of the joint softmax.
  dv = jnp.einsum("bhwu,bhwc->bhuc", a, g, preferred_element_type=f32)
  # d(energy) = a * (d(weight) - sum over both branches of a * d(weight)) and
  # that sum is <d_out, out> = delta.
  ds = a * (jnp.einsum("bhwc,bhuc->bhwu", g, v.astype(f32)) - delta[..., None])
  dq = jnp.einsum("bhwu,bhuc->bhwc", ds, k.astype(f32))
  dk = jnp.einsum("bhwu,bhwc->bhuc", ds, q.astype(f32))
  return dq, dk, dv


def _criss_cross_bwd(residuals, d_out):
  q, k, v, out, lse = residuals
  g = d_out.astype(jnp.float32)
  delta = jnp.sum(g * out.astype(jnp.float32), axis=-1)
  dq, dk, dv = _axial_bwd(q, k, v, g, lse, delta, mask_diagonal=False)
  t = lambda x: jnp.swapaxes(x, 1, 2)
  dq_col, dk_col, dv_col = _axial_bwd(t(q), t(k), t(v), t(g), t(lse), t(delta), mask_diagonal=True)
  return (
      (dq + t(dq_col)).astype(q.dtype),
      (dk + t(dk_col)).astype(k.dtype),
      (dv + t(dv_col)).astype(v.dtype),
  )


_criss_cross.defvjp(_criss_cross_fwd, _criss_cross_bwd)


def criss_cross_attention_recompute(q: Array, k: Array, v: Array) -> Array:
  """:func:`criss_cross_attention` that keeps no (B, H, W, H + W) tensor for backward.

  Args:
    q: queries (B, H, W, C').
    k: keys (B, H, W, C').
    v: values (B, H, W, C).

  Returns:
    The context (B, H, W, C) in v's dtype; energies and softmax in float32.
  """
  _check_inputs(q, k, v)
  return _criss_cross(q, k, v)
