"""Criss-cross attention as two fused axial attentions that share one log-sum-exp.

The H + W - 1 energies of a pixel split into its row (W keys) and its column
(H keys, the pixel itself masked). Each branch is an ordinary attention over
short sequences: the B * H rows of length W and the B * W columns of length H.
One kernel, ``axial_attention_fwd``, serves both: a grid step holds a block of
queries and their whole sequence of keys (H, W <= a few hundred), so the
softmax needs no online rescaling. It returns the branch output normalised by its own softmax and the branch's
log-sum-exp; the joint softmax is recovered exactly by

  lse = logaddexp(lse_row, lse_col)
  out = exp(lse_row - lse) * o_row + exp(lse_col - lse) * o_col.

The backward pass is flash-attention style (``jax.custom_vjp``): the residuals
are q, k, v, the output and the joint lse, and ``axial_attention_bwd``
recomputes each branch's probabilities from them. Neither pass writes the
(B, H, W, H + W) energies or weights to memory.

Layout. Rows are (B*H, W, C) views of the NHWC maps, columns (B*W, H, C)
transposed copies. On TPU (and in the interpreter by default) a grid step
reads a whole sequence as an (L, C) block equal to the full trailing array
dims, which Mosaic accepts for any L and C. On GPU the kernels are Triton
kernels, which need power-of-two blocks and dots of at least 16: sequences and
channels are padded in memory to powers of two >= 16 (97 -> 128), padded keys
masked with -inf and padded channels zero, and a program handles 32 queries
(or, in the dk/dv backward kernel, 32 keys) so its (32, L) energies fit in
registers. The interpreter runs either layout (``pad_to_power_of_two``). Value channels are
processed in slices of 128 (the TPU lane width) so the accumulators stay small
for C = 512. The lowering for both accelerators is tested on CPU; compiling
and running them needs the devices.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pl_triton

from ccnet_jax.ops.criss_cross import _check_inputs

Array = jax.Array

_MIN_BLOCK = 16
_CHANNEL_SLICE = 128
_TRITON_QUERY_BLOCK = 32  # Queries (or keys) per Triton program: s is (32, L) in registers.


def _padded(n: int, pad: bool) -> int:
  """With ``pad``, the power of two >= max(n, 16) that Triton needs; else n."""
  return max(_MIN_BLOCK, 1 << (n - 1).bit_length()) if pad else n


def _query_block(seq: int, pad: bool) -> int:
  """Whole sequences for Mosaic and the interpreter, blocks of 32 for Triton."""
  return min(seq, _TRITON_QUERY_BLOCK) if pad else seq


def _pad_to(x: Array, axis: int, size: int) -> Array:
  if x.shape[axis] == size:
    return x
  widths = [(0, 0)] * x.ndim
  widths[axis] = (0, size - x.shape[axis])
  return jnp.pad(x, widths)


def _channel_slices(channels: int) -> list[slice]:
  width = _CHANNEL_SLICE if channels % _CHANNEL_SLICE == 0 else channels
  return [slice(c, c + width) for c in range(0, channels, width)]


def _dot(a: Array, b: Array, contract: tuple[int, int]) -> Array:
  """2-D product contracting a's axis contract[0] with b's axis contract[1], in float32."""
  dims = (((contract[0],), (contract[1],)), ((), ()))
  return jax.lax.dot_general(a, b, dims, preferred_element_type=jnp.float32)


def _masked_energies(
    q: Array, k: Array, length: int, mask_diagonal: bool, query_offset=0, key_offset=0
) -> Array:
  """s[i, j] = <q_i, k_j> in float32, -inf for padded keys and (optionally) j == i.

  q and k may be blocks of the sequence; the offsets are their first positions.
  """
  s = _dot(q, k, (1, 1))
  query = query_offset + jax.lax.broadcasted_iota(jnp.int32, s.shape, 0)
  key = key_offset + jax.lax.broadcasted_iota(jnp.int32, s.shape, 1)
  invalid = key >= length
  if mask_diagonal:
    invalid = invalid | (key == query)
  return jnp.where(invalid, -jnp.inf, s)


def _fwd_kernel(q_ref, k_ref, v_ref, o_ref, lse_ref, *, length, mask_diagonal):
  """One block of queries against their whole sequence."""
  offset = pl.program_id(1) * q_ref.shape[0]
  s = _masked_energies(q_ref[...], k_ref[...], length, mask_diagonal, query_offset=offset)
  m = jnp.max(s, axis=1, keepdims=True)
  m = jnp.where(m == -jnp.inf, 0.0, m)  # A fully masked row (a 1-pixel column) gives p = 0.
  p = jnp.exp(s - m)
  total = jnp.sum(p, axis=1, keepdims=True)
  inverse = jnp.where(total > 0, 1.0 / total, 0.0)
  p = (p * inverse).astype(v_ref.dtype)
  for channels in _channel_slices(v_ref.shape[-1]):
    o_ref[:, channels] = _dot(p, v_ref[:, channels], (1, 0)).astype(o_ref.dtype)
  lse_ref[...] = m + jnp.log(total)  # -inf where every key is masked.


def _probabilities_and_grad(q, k, v_ref, do_ref, lse, delta, length, mask_diagonal,
                            query_offset=0, key_offset=0, dv_ref=None):
  """p = exp(s - lse) and ds = p * (dO V^T - delta); with ``dv_ref``, also dV = p^T dO."""
  s = _masked_energies(q, k, length, mask_diagonal, query_offset, key_offset)
  p = jnp.exp(s - lse)  # This branch's share of the joint softmax.
  dp = jnp.zeros(s.shape, jnp.float32)
  for channels in _channel_slices(v_ref.shape[-1]):
    do = do_ref[:, channels].astype(jnp.float32)
    if dv_ref is not None:
      dv_ref[:, channels] = _dot(p, do, (0, 0)).astype(dv_ref.dtype)
    dp = dp + _dot(do, v_ref[:, channels].astype(jnp.float32), (1, 1))
  return p * (dp - delta)


def _bwd_kernel(
    q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, dq_ref, dk_ref, dv_ref, *, length,
    mask_diagonal,
):
  """dq, dk and dv of a whole sequence at once (the unblocked layout)."""
  q, k = q_ref[...], k_ref[...]
  ds = _probabilities_and_grad(
      q, k, v_ref, do_ref, lse_ref[...], delta_ref[...], length, mask_diagonal,
      dv_ref=dv_ref,
  )
  dq_ref[...] = _dot(ds, k.astype(jnp.float32), (1, 0)).astype(dq_ref.dtype)
  dk_ref[...] = _dot(ds, q.astype(jnp.float32), (0, 0)).astype(dk_ref.dtype)


def _bwd_dq_kernel(
    q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, dq_ref, *, length, mask_diagonal
):
  """dq of one block of queries (the blocked layout): a sum over all keys."""
  offset = pl.program_id(1) * q_ref.shape[0]
  k = k_ref[...]
  ds = _probabilities_and_grad(
      q_ref[...], k, v_ref, do_ref, lse_ref[...], delta_ref[...], length, mask_diagonal,
      query_offset=offset,
  )
  dq_ref[...] = _dot(ds, k.astype(jnp.float32), (1, 0)).astype(dq_ref.dtype)


def _bwd_dkdv_kernel(
    q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, dk_ref, dv_ref, *, length,
    mask_diagonal,
):
  """dk and dv of one block of keys (the blocked layout): sums over all queries."""
  offset = pl.program_id(1) * k_ref.shape[0]
  q = q_ref[...]
  ds = _probabilities_and_grad(
      q, k_ref[...], v_ref, do_ref, lse_ref[...], delta_ref[...], length, mask_diagonal,
      key_offset=offset, dv_ref=dv_ref,
  )
  dk_ref[...] = _dot(ds, q.astype(jnp.float32), (0, 0)).astype(dk_ref.dtype)


def _blocked(block: int, channels: int) -> pl.BlockSpec:
  """Block j of sequence i."""
  return pl.BlockSpec((None, block, channels), lambda i, j: (i, j, 0))


def _whole(length: int, channels: int) -> pl.BlockSpec:
  """All of sequence i, whatever the block index."""
  return pl.BlockSpec((None, length, channels), lambda i, j: (i, 0, 0))


def _call(kernel, *args, interpret: bool, **pallas_kwargs):
  """pallas_call lowered with Triton on GPU and Mosaic on TPU.

  On GPU the default would be Mosaic GPU, which stages whole blocks in shared
  memory; (L, C) = (256, 512) float32 blocks exceed it. The compiler parameters
  must match the platform, so the choice is made at lowering time.
  """
  if interpret:
    return pl.pallas_call(kernel, interpret=True, **pallas_kwargs)(*args)
  triton = pl_triton.CompilerParams(num_warps=4, num_stages=1)
  on_gpu = lambda *a: pl.pallas_call(kernel, compiler_params=triton, **pallas_kwargs)(*a)
  default = lambda *a: pl.pallas_call(kernel, **pallas_kwargs)(*a)
  return jax.lax.platform_dependent(*args, cuda=on_gpu, rocm=on_gpu, default=default)


def axial_attention_fwd(
    q: Array, k: Array, v: Array, *, length: int, mask_diagonal: bool, block: int,
    interpret: bool,
) -> tuple[Array, Array]:
  """Softmax attention within each of N padded sequences.

  Args:
    q, k: (N, L, C') with L and C' padded as the kernels need (see module doc).
    v: (N, L, C).
    length: the number of real (unpadded) keys; keys at positions >= length are masked.
    mask_diagonal: also mask key i for query i.
    block: queries per grid step; divides L.
    interpret: run the kernel in the Pallas interpreter.

  Returns:
    ``(out, lse)``: (N, L, C) float32, normalised within the sequence, and the
    (N, L, 1) float32 log-sum-exp of the energies (-inf for a fully masked row).
  """
  n, seq, key_channels = q.shape
  channels = v.shape[-1]
  kernel = functools.partial(_fwd_kernel, length=length, mask_diagonal=mask_diagonal)
  return _call(
      kernel, q, k, v, interpret=interpret,
      grid=(n, seq // block),
      in_specs=[
          _blocked(block, key_channels),
          _whole(seq, key_channels),
          _whole(seq, channels),
      ],
      # lse as (L, 1) rather than (L,): TPU blocks need their last two dims whole or tiled.
      out_specs=[_blocked(block, channels), _blocked(block, 1)],
      out_shape=[
          jax.ShapeDtypeStruct((n, seq, channels), jnp.float32),
          jax.ShapeDtypeStruct((n, seq, 1), jnp.float32),
      ],
      name="axial_attention_fwd",
  )


def axial_attention_bwd(
    q: Array, k: Array, v: Array, d_out: Array, lse: Array, delta: Array, *, length: int,
    mask_diagonal: bool, block: int, interpret: bool,
) -> tuple[Array, Array, Array]:
  """One branch's float32 (dq, dk, dv), given the joint lse and delta = sum(d_out * out, -1).

  Shapes as in :func:`axial_attention_fwd`; ``d_out`` is (N, L, C), ``lse`` and
  ``delta`` are (N, L, 1) and finite on every row (padded query rows included).
  With ``block == L`` one kernel computes all three; otherwise, as in flash
  attention, one kernel sums dq over the keys for each block of queries and one
  sums dk and dv over the queries for each block of keys, both recomputing p.
  """
  n, seq, key_channels = q.shape
  channels = v.shape[-1]
  args = (q, k, v, d_out, lse, delta)
  options = dict(length=length, mask_diagonal=mask_diagonal)
  f32 = lambda c: jax.ShapeDtypeStruct((n, seq, c), jnp.float32)
  if block == seq:
    return _call(
        functools.partial(_bwd_kernel, **options), *args, interpret=interpret,
        grid=(n, 1),
        in_specs=[_whole(seq, c) for c in (key_channels, key_channels, channels, channels, 1, 1)],
        out_specs=[_whole(seq, c) for c in (key_channels, key_channels, channels)],
        out_shape=[f32(key_channels), f32(key_channels), f32(channels)],
        name="axial_attention_bwd",
    )
  (dq,) = _call(
      functools.partial(_bwd_dq_kernel, **options), *args, interpret=interpret,
      grid=(n, seq // block),
      in_specs=[
          _blocked(block, key_channels),
          _whole(seq, key_channels),
          _whole(seq, channels),
          _blocked(block, channels),
          _blocked(block, 1),
          _blocked(block, 1),
      ],
      out_specs=[_blocked(block, key_channels)],
      out_shape=[f32(key_channels)],
      name="axial_attention_bwd_dq",
  )
  dk, dv = _call(
      functools.partial(_bwd_dkdv_kernel, **options), *args, interpret=interpret,
      grid=(n, seq // block),
      in_specs=[
          _whole(seq, key_channels),
          _blocked(block, key_channels),
          _blocked(block, channels),
          _whole(seq, channels),
          _whole(seq, 1),
          _whole(seq, 1),
      ],
      out_specs=[_blocked(block, key_channels), _blocked(block, channels)],
      out_shape=[f32(key_channels), f32(channels)],
      name="axial_attention_bwd_dkdv",
  )
  return dq, dk, dv


# Layout changes between NHWC maps and padded sequences. Rows: (B*H, W, C).
# Columns: (B*W, H, C). Channels are padded for q and k (zeros leave dot
# products unchanged) and for v (the padded outputs are dropped).


def _to_rows(x: Array, seq: int, channels: int) -> Array:
  b, h, w, c = x.shape
  x = _pad_to(_pad_to(x.reshape(b * h, w, c), 1, seq), 2, channels)
  return x


def _to_columns(x: Array, seq: int, channels: int) -> Array:
  b, h, w, c = x.shape
  x = jnp.swapaxes(x, 1, 2).reshape(b * w, h, c)
  return _pad_to(_pad_to(x, 1, seq), 2, channels)


def _from_rows(x: Array, shape: tuple[int, ...]) -> Array:
  b, h, w = shape[:3]
  return x[:, :w, : shape[3]].reshape(b, h, w, shape[3])


def _from_columns(x: Array, shape: tuple[int, ...]) -> Array:
  b, h, w = shape[:3]
  return jnp.swapaxes(x[:, :h, : shape[3]].reshape(b, w, h, shape[3]), 1, 2)


def _rows_vec(x: Array, seq: int) -> Array:
  b, h, w = x.shape
  return _pad_to(x.reshape(b * h, w, 1), 1, seq)


def _columns_vec(x: Array, seq: int) -> Array:
  b, h, w = x.shape
  return _pad_to(jnp.swapaxes(x, 1, 2).reshape(b * w, h, 1), 1, seq)


def _vec_from_rows(x: Array, shape: tuple[int, ...]) -> Array:
  b, h, w = shape[:3]
  return x[:, :w, 0].reshape(b, h, w)


def _vec_from_columns(x: Array, shape: tuple[int, ...]) -> Array:
  b, h, w = shape[:3]
  return jnp.swapaxes(x[:, :h, 0].reshape(b, w, h), 1, 2)


class _Options(NamedTuple):
  interpret: bool
  pad: bool


def _forward(q, k, v, options):
  interpret, pad = options
  b, h, w, key_channels = q.shape
  channels = v.shape[-1]
  kc, vc = _padded(key_channels, pad), _padded(channels, pad)
  shape = (b, h, w, channels)
  row_seq, col_seq = _padded(w, pad), _padded(h, pad)
  o_row, lse_row = axial_attention_fwd(
      _to_rows(q, row_seq, kc), _to_rows(k, row_seq, kc), _to_rows(v, row_seq, vc),
      length=w, mask_diagonal=False, block=_query_block(row_seq, pad), interpret=interpret,
  )
  o_col, lse_col = axial_attention_fwd(
      _to_columns(q, col_seq, kc), _to_columns(k, col_seq, kc), _to_columns(v, col_seq, vc),
      length=h, mask_diagonal=True, block=_query_block(col_seq, pad), interpret=interpret,
  )
  lse_row, lse_col = _vec_from_rows(lse_row, shape), _vec_from_columns(lse_col, shape)
  lse = jnp.logaddexp(lse_row, lse_col)  # The row always has a key, so lse is finite.
  out = (
      jnp.exp(lse_row - lse)[..., None] * _from_rows(o_row, shape)
      + jnp.exp(lse_col - lse)[..., None] * _from_columns(o_col, shape)
  )
  return out.astype(v.dtype), lse


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _criss_cross(q, k, v, options):
  return _forward(q, k, v, options)[0]


def _criss_cross_fwd(q, k, v, options):
  out, lse = _forward(q, k, v, options)
  return out, (q, k, v, out, lse)


def _criss_cross_bwd(options, residuals, d_out):
  interpret, pad = options
  q, k, v, out, lse = residuals
  b, h, w, key_channels = q.shape
  channels = v.shape[-1]
  kc, vc = _padded(key_channels, pad), _padded(channels, pad)
  row_seq, col_seq = _padded(w, pad), _padded(h, pad)
  delta = jnp.sum(d_out.astype(jnp.float32) * out.astype(jnp.float32), axis=-1)
  dq_row, dk_row, dv_row = axial_attention_bwd(
      _to_rows(q, row_seq, kc), _to_rows(k, row_seq, kc), _to_rows(v, row_seq, vc),
      _to_rows(d_out, row_seq, vc), _rows_vec(lse, row_seq), _rows_vec(delta, row_seq),
      length=w, mask_diagonal=False, block=_query_block(row_seq, pad), interpret=interpret,
  )
  dq_col, dk_col, dv_col = axial_attention_bwd(
      _to_columns(q, col_seq, kc), _to_columns(k, col_seq, kc),
      _to_columns(v, col_seq, vc), _to_columns(d_out, col_seq, vc),
      _columns_vec(lse, col_seq), _columns_vec(delta, col_seq),
      length=h, mask_diagonal=True, block=_query_block(col_seq, pad), interpret=interpret,
  )
  key_shape = (b, h, w, key_channels)
  dq = _from_rows(dq_row, key_shape) + _from_columns(dq_col, key_shape)
  dk = _from_rows(dk_row, key_shape) + _from_columns(dk_col, key_shape)
  dv = _from_rows(dv_row, v.shape) + _from_columns(dv_col, v.shape)
  return dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype)


_criss_cross.defvjp(_criss_cross_fwd, _criss_cross_bwd)


def criss_cross_attention_pallas(
    q: Array,
    k: Array,
    v: Array,
    *,
    interpret: bool | None = None,
    pad_to_power_of_two: bool | None = None,
) -> Array:
  """Criss-cross attention with the semantics of ``ops.criss_cross_attention``.

  Args:
    q: queries (B, H, W, C').
    k: keys (B, H, W, C').
    v: values (B, H, W, C).
    interpret: run the kernels in the Pallas interpreter; None means on CPU only.
    pad_to_power_of_two: pad sequences and channels to powers of two >= 16 in
      memory, as Triton requires; None means on GPU only. Mosaic (TPU) and the
      interpreter take whole unpadded (L, C) blocks, which saves the copies.

  Returns:
    The context (B, H, W, C) in v's dtype; energies and softmax in float32.
  """
  _check_inputs(q, k, v)
  if interpret is None:
    interpret = jax.default_backend() == "cpu"
  if pad_to_power_of_two is None:
    pad_to_power_of_two = jax.default_backend() == "gpu"
  return _criss_cross(q, k, v, _Options(bool(interpret), bool(pad_to_power_of_two)))
