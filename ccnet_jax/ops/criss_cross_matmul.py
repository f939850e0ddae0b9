"""Criss-cross attention as batched matrix products: the form that ONNX runtimes accept.

The same function as :func:`ccnet_jax.ops.criss_cross.criss_cross_attention`, written with
what converts to plain ONNX operators that ONNX Runtime and TensorRT run: transposes, batched
``matmul`` (each product has one free and one contracted axis, so it becomes ``MatMul``, not
``Einsum``), a diagonal mask built by comparing two iotas (``jnp.eye`` converts to
``EyeLike``, which ONNX Runtime does not implement for recent opsets) and the reference's joint
softmax over both branches (``ReduceMax``, ``Exp``, ``ReduceSum``, ``Div``: slicing a
concatenation at a symbolic bound is what the converter gets wrong). Every shape is read from
the inputs, so the graph keeps symbolic batch and image sizes. Training keeps the einsum
reference, which XLA fuses.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ccnet_jax.ops.criss_cross import _check_inputs, joint_softmax

Array = jax.Array


def _columns_first(x: Array) -> Array:
  """(B, H, W, C) <-> (B, W, H, C): puts the column's pixels on the matrix axis."""
  return jnp.transpose(x, (0, 2, 1, 3))


def _transposed(x: Array) -> Array:
  """(..., M, N) -> (..., N, M)."""
  return jnp.swapaxes(x, -1, -2)


def criss_cross_attention_matmul(q: Array, k: Array, v: Array) -> Array:
  """Aggregates v over each pixel's row and column, weighted by one joint softmax.

  Args:
    q: queries (B, H, W, C').
    k: keys (B, H, W, C').
    v: values (B, H, W, C).

  Returns:
    The context (B, H, W, C) in v's dtype, without gamma and residual.
  """
  _check_inputs(q, k, v)
  height = q.shape[1]
  accumulator = jnp.promote_types(q.dtype, jnp.float32)  # float64 stays float64.
  # Products of two bfloat16 numbers are exact in float32: casting first and multiplying in
  # float32 is the reference's bfloat16 product with a float32 accumulator.
  q = q.astype(accumulator)
  k = k.astype(accumulator)
  q_columns = _columns_first(q)
  # e_col[b, w, h, g] = <q[b, h, w], k[b, g, w]>, then back to (B, H, W, H).
  e_col = _columns_first(q_columns @ _transposed(_columns_first(k)))
  # e_row[b, h, w, u] = <q[b, h, w], k[b, h, u]>.
  e_row = q @ _transposed(k)
  rows = jax.lax.broadcasted_iota(jnp.int32, (height, 1, height), 0)
  columns = jax.lax.broadcasted_iota(jnp.int32, (height, 1, height), 2)
  e_col = jnp.where(rows == columns, -jnp.inf, e_col)
  a_col, a_row = joint_softmax(e_col, e_row)
  values_dtype = jnp.promote_types(v.dtype, jnp.float32)
  weights = lambda a: a.astype(v.dtype).astype(values_dtype)
  values = v.astype(values_dtype)
  context_col = _columns_first(_columns_first(weights(a_col)) @ _columns_first(values))
  context_row = weights(a_row) @ values
  return (context_col + context_row).astype(v.dtype)
