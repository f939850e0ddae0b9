"""Criss-cross attention whose backward pass recomputes the attention weights.

The einsum path keeps the (B, H, W, H + W) energies and weights of every
recurrence for the backward pass. Here the residuals are q, k, v, the output
(which the module keeps anyway for gamma's gradient) and the (B, H, W) joint
log-sum-exp; the backward recomputes the energies once and derives the weights
as exp(e - lse), as flash attention does, without a second forward pass.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ccnet_jax.ops.criss_cross import _check_inputs, criss_cross_energies

Array = jax.Array


def _weights(q: Array, k: Array, lse: Array) -> tuple[Array, Array]:
  e_col, e_row = criss_cross_energies(q, k)
  return jnp.exp(e_col - lse[..., None]), jnp.exp(e_row - lse[..., None])


def _aggregate(a_col: Array, a_row: Array, v: Array) -> Array:
  """sum_g a_col[b,h,w,g] v[b,g,w] + sum_u a_row[b,h,w,u] v[b,h,u], in float32."""
  return jnp.einsum(
      "bhwg,bgwc->bhwc", a_col.astype(v.dtype), v, preferred_element_type=jnp.float32
  ) + jnp.einsum(
      "bhwu,bhuc->bhwc", a_row.astype(v.dtype), v, preferred_element_type=jnp.float32
  )


def _forward(q: Array, k: Array, v: Array) -> tuple[Array, Array]:
  e_col, e_row = criss_cross_energies(q, k)
  lse = jnp.logaddexp(
      jax.nn.logsumexp(e_col, axis=-1), jax.nn.logsumexp(e_row, axis=-1)
  )
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


def _criss_cross_bwd(residuals, d_out):
  q, k, v, out, lse = residuals
  a_col, a_row = _weights(q, k, lse)
  g = d_out.astype(jnp.float32)
  f32 = jnp.float32
  dv = jnp.einsum("bhwg,bhwc->bgwc", a_col, g, preferred_element_type=f32) + jnp.einsum(
      "bhwu,bhwc->bhuc", a_row, g, preferred_element_type=f32
  )
  # d(energy) = a * (d(weight) - sum(a * d(weight))); the sum equals <d_out, out>.
  delta = jnp.sum(g * out.astype(f32), axis=-1, keepdims=True)
  vf = v.astype(f32)
  ds_col = a_col * (jnp.einsum("bhwc,bgwc->bhwg", g, vf) - delta)
  ds_row = a_row * (jnp.einsum("bhwc,bhuc->bhwu", g, vf) - delta)
  qf, kf = q.astype(f32), k.astype(f32)
  dq = jnp.einsum("bhwg,bgwc->bhwc", ds_col, kf) + jnp.einsum("bhwu,bhuc->bhwc", ds_row, kf)
  dk = jnp.einsum("bhwg,bhwc->bgwc", ds_col, qf) + jnp.einsum("bhwu,bhwc->bhuc", ds_row, qf)
  return dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype)


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
