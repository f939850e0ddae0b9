"""Criss-cross attention as two fused axial attentions that share one log-sum-exp.

The H + W - 1 energies of a pixel split into its row (W keys) and its column
(H keys, the pixel itself masked). Each branch is an ordinary attention over
short sequences: the B * H rows of length W and the B * W columns of length H.
A program holds a block of queries and their whole sequence of keys (H, W are a
few hundred at most), so the softmax needs no online rescaling.

Forward (on GPU; TPU swaps the order, see Layout): the row kernel writes the
row output normalised by the row's own softmax and the row's log-sum-exp; the
column kernel then computes the joint log-sum-exp, lse = logaddexp(lse_row,
lse_col), and writes the final output

  out = exp(lse_row - lse) * o_row + exp(s_col - lse) @ v_col,

so the two branches are combined without another pass over memory.

Backward (``jax.custom_vjp``, flash-attention style): the residuals are q, k,
v, the output and the joint lse. One fused kernel per branch: a program owns a
whole sequence (all its queries and keys), recomputes p = exp(s - lse) once and
computes dq, dk and dv from it -- no split dq / dk-dv passes, no atomics. The
row kernel also writes delta = sum(d_out * out) for the column kernel, which
adds the row kernel's gradients to its own and writes the results.

Layout. On GPU every kernel reads the NHWC arrays in place: a row is the block
(None, None, L, C) at (b, h, 0, 0), a column the strided block (None, L, None,
C) at (b, 0, w, 0); nothing is transposed or padded in memory. The kernels are
Triton kernels, which need power-of-two blocks and dots of at least 16: blocks
are rounded up (97 -> 128 keys, 8 -> 16 channels) and the loads and stores
past the array's edge are masked. On TPU (Mosaic) and, by default, in the
interpreter a block is the whole unpadded sequence; Mosaic needs a block's last
two dims whole or tiled, which a strided column is not, so there the column
branch runs first, as the rows of transposed copies, and the row branch merges.
The tunables (query block, channel slice, Triton's num_warps and num_stages)
are a :class:`BlockSizes`, a static argument.

bfloat16: the products run in the input dtype with float32 accumulation, the
softmax in float32 (see _weighted_sum and _forward for what keeps the results
as accurate as the einsum's).
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pl_triton

from ccnet_jax.ops.criss_cross import _check_inputs

Array = jax.Array

_MIN_BLOCK = 16  # Triton's smallest dot dimension.


def _is_power_of_two(n: int) -> bool:
  return n >= 1 and n & (n - 1) == 0


@dataclasses.dataclass(frozen=True)
class BlockSizes:
  """Tunables of the GPU (Triton) kernels; hashable, so a static argument.

  Attributes:
    query_block: queries per forward program (a power of two >= 16; capped at
      the padded sequence). Smaller blocks give more programs and smaller
      (query_block, L) energy tiles. The backward program always owns the whole
      sequence, so that dk and dv need no accumulation across programs.
    channel_slice: value channels per product (a power of two >= 16): the
      forward writes the output and the backward dv and dO V^T slice by slice,
      bounding the (L, channel_slice) tiles in registers.
    num_warps: Triton warps per program, for every kernel.
    num_stages: Triton software-pipelining stages, for every kernel.

  Keys are not blocked: a program scores its queries against the whole
  (padded) sequence at once, as the softmax needs all of it.
  """

  query_block: int = 64
  channel_slice: int = 128
  num_warps: int = 8
  num_stages: int = 1

  def __post_init__(self):
    for name in ("query_block", "channel_slice"):
      value = getattr(self, name)
      if value < _MIN_BLOCK or not _is_power_of_two(value):
        raise ValueError(
            f"BlockSizes.{name}={value}: use a power of two >= {_MIN_BLOCK} (Triton block"
            " shapes are powers of two and its dots need dimensions >= 16)."
        )
    if not _is_power_of_two(self.num_warps):
      raise ValueError(f"BlockSizes.num_warps={self.num_warps}: use a power of two.")
    if self.num_stages < 1:
      raise ValueError(f"BlockSizes.num_stages={self.num_stages}: use 1 or more.")


# The tunables worth trying on a GPU (benchmarks/cca_kernels.py --sweep times
# every combination; the tests check each one in the interpreter and lowers it).
# query_block only changes the forward kernels (a backward program owns a whole
# sequence); channel_slice and num_warps change both. num_stages stays 1: the
# kernels have no loop for Triton to pipeline.
TUNING_GRID = {
    "query_block": (32, 64, 128),
    "channel_slice": (64, 128),
    "num_warps": (4, 8),
    "num_stages": (1,),
}


def tuning_configurations() -> list[BlockSizes]:
  """Every combination of TUNING_GRID, the default first, then in a fixed order."""
  names = list(TUNING_GRID)
  grid = [
      BlockSizes(**dict(zip(names, values)))
      for values in itertools.product(*(TUNING_GRID[n] for n in names))
  ]
  return sorted(grid, key=lambda sizes: sizes != BlockSizes())


class _Branch(NamedTuple):
  """The static geometry of one branch's kernels."""

  mask_diagonal: bool  # The column branch: key i is masked for query i.
  strided: bool  # Sequences run down the columns of the arrays (read in place), else rows.
  length: int  # Real sequence length.
  seq: int  # Block length along the sequence: `length`, or its padded power of two.
  query_block: int  # Queries per forward program; divides `seq`.
  key_channels: int  # Real C'.
  key_block: int  # Channels of a q/k block: C', or its padded power of two.
  channels: int  # Real C.
  value_block: int  # Channels of a v block: C, or its padded power of two.
  channel_slice: int  # Divides `value_block`.


def _padded(n: int) -> int:
  """The power of two >= max(n, 16) that a Triton block needs."""
  return max(_MIN_BLOCK, 1 << (n - 1).bit_length())


def _branch(
    mask_diagonal: bool, strided: bool, q_shape, channels: int, pad: bool, sizes: BlockSizes
) -> _Branch:
  """The geometry of a branch over arrays of q's shape (sequences down or along its rows)."""
  length = q_shape[1] if strided else q_shape[2]
  key_channels = q_shape[3]
  if not pad:
    slice_ = sizes.channel_slice if channels % sizes.channel_slice == 0 else channels
    return _Branch(
        mask_diagonal,
        strided,
        length,
        length,
        length,
        key_channels,
        key_channels,
        channels,
        channels,
        slice_,
    )
  seq, value_block = _padded(length), _padded(channels)
  return _Branch(
      mask_diagonal,
      strided,
      length,
      seq,
      min(sizes.query_block, seq),
      key_channels,
      _padded(key_channels),
      channels,
      value_block,
      min(sizes.channel_slice, value_block),
  )


# Masked access to blocks that may extend past the array's edge.


def _edge_mask(shape, row_start, rows: int, cols: int) -> Array:
  row = row_start + jax.lax.broadcasted_iota(jnp.int32, shape, 0)
  col = jax.lax.broadcasted_iota(jnp.int32, shape, 1)
  return (row < rows) & (col < cols)


def _view(ref, start: int | None, size: int | None):
  """The channel slice [start, start + size) of a (rows, channels) block, or all of it."""
  return ref if start is None else ref.at[:, pl.ds(start, size)]


def _read(ref, rows: int, cols: int, row_start=0, start=None, size=None) -> Array:
  """A block, zero past `rows` rows (from row_start) and `cols` columns of the array."""
  view = _view(ref, start, size)
  col_start = 0 if start is None else start
  if ref.shape == (rows, cols):  # The block is the array: nothing to mask.
    return view[...]
  mask = _edge_mask(view.shape, row_start, rows, cols - col_start)
  return pl_triton.load(view, mask=mask, other=0)


def _write(ref, value: Array, rows: int, cols: int, row_start=0, start=None, size=None):
  """Stores a block, leaving alone what lies past the array's edge."""
  view = _view(ref, start, size)
  value = value.astype(ref.dtype)
  if ref.shape == (rows, cols):
    view[...] = value
    return
  col_start = 0 if start is None else start
  pl_triton.store(view, value, mask=_edge_mask(view.shape, row_start, rows, cols - col_start))


def _dot(a: Array, b: Array, contract: tuple[int, int]) -> Array:
  """2-D product contracting a's axis contract[0] with b's axis contract[1], in float32."""
  dims = (((contract[0],), (contract[1],)), ((), ()))
  return jax.lax.dot_general(a, b, dims, preferred_element_type=jnp.float32)


def _masked_energies(q: Array, k: Array, branch: _Branch, query_start=0) -> Array:
  """s[i, j] = <q_i, k_j> in float32; -inf for padded keys and, in columns, for j == i."""
  s = _dot(q, k, (1, 1))
  query = query_start + jax.lax.broadcasted_iota(jnp.int32, s.shape, 0)
  key = jax.lax.broadcasted_iota(jnp.int32, s.shape, 1)
  invalid = key >= branch.length
  if branch.mask_diagonal:
    invalid = invalid | (key == query)
  return jnp.where(invalid, -jnp.inf, s)


def _weighted_sum(p: Array, v: Array) -> Array:
  """p @ v in float32 with the dot in v's dtype, p split into a rounded part and its rest.

  Rounding p to bfloat16 alone would err by 2^-9 of every weight; the output's
  error then biases the backward's delta = sum(dO * out) and through it every
  dq and dk. The second product makes the weights exact to ~2^-17.
  """
  high = p.astype(v.dtype)
  out = _dot(high, v, (1, 0))
  if v.dtype == jnp.float32:
    return out
  return out + _dot((p - high.astype(jnp.float32)).astype(v.dtype), v, (1, 0))


def _logaddexp(a: Array, b: Array) -> Array:
  """log(exp(a) + exp(b)) for a finite `a` and a possibly -inf `b`."""
  top = jnp.maximum(a, b)
  return top + jnp.log(jnp.exp(a - top) + jnp.exp(b - top))


def _channel_starts(branch: _Branch) -> range:
  return range(0, branch.value_block, branch.channel_slice)


def _fwd_kernel(q_ref, k_ref, v_ref, *refs, branch: _Branch, merge: bool):
  """One block of queries against its whole sequence.

  Without `merge` (the first branch): writes this branch's normalised output
  and lse. With it (the second): also reads the first branch's and writes the
  joint output and lse. The output is written to every output ref but the last
  (the lse), each in its own dtype.
  """
  if merge:
    o_prev_ref, lse_prev_ref, *o_refs, lse_ref = refs
  else:
    *o_refs, lse_ref = refs
  n, kc, c, cs = branch.length, branch.key_channels, branch.channels, branch.channel_slice
  start = pl.program_id(2) * branch.query_block
  q = _read(q_ref, n, kc, row_start=start)
  s = _masked_energies(q, _read(k_ref, n, kc), branch, start)
  m = jnp.max(s, axis=1, keepdims=True)
  m = jnp.where(m == -jnp.inf, 0.0, m)  # A fully masked row (a 1-pixel column) gives p = 0.
  p = jnp.exp(s - m)
  total = jnp.sum(p, axis=1, keepdims=True)
  lse = m + jnp.log(total)  # -inf where every key is masked.
  if merge:
    lse_prev = _read(lse_prev_ref, n, 1, row_start=start)
    lse = _logaddexp(lse_prev, lse)
    prev_scale = jnp.exp(lse_prev - lse)
  p = p * jnp.where(total > 0, jnp.exp(m - lse), 0.0)
  for c0 in _channel_starts(branch):
    o = _weighted_sum(p, _read(v_ref, n, c, start=c0, size=cs))
    if merge:
      o = o + prev_scale * _read(o_prev_ref, n, c, row_start=start, start=c0, size=cs)
    for o_ref in o_refs:
      _write(o_ref, o, n, c, row_start=start, start=c0, size=cs)
  _write(lse_ref, lse, n, 1, row_start=start)


def _bwd_kernel(
    q_ref, k_ref, v_ref, do_ref, lse_ref, delta_or_out_ref, *refs, branch: _Branch, merge: bool
):
  """dq, dk and dv of one whole sequence, from one recomputation of p.

  Without `merge` (the first branch) the sixth input is the forward output,
  from which delta = sum(dO * out) is computed and written for the second
  branch's kernel; with it the sixth input is delta, and the first branch's
  gradients are read and added to this branch's.
  """
  if merge:
    dq_prev_ref, dk_prev_ref, dv_prev_ref, dq_ref, dk_ref, dv_ref = refs
  else:
    dq_ref, dk_ref, dv_ref, delta_out_ref = refs
  n, kc, c, cs = branch.length, branch.key_channels, branch.channels, branch.channel_slice
  q, k = _read(q_ref, n, kc), _read(k_ref, n, kc)
  s = _masked_energies(q, k, branch)
  valid_query = jax.lax.broadcasted_iota(jnp.int32, (s.shape[0], 1), 0) < n
  p = jnp.where(valid_query, jnp.exp(s - _read(lse_ref, n, 1)), 0.0)
  p_low = p.astype(v_ref.dtype)  # The dv product runs in the input dtype.
  dp = jnp.zeros(s.shape, jnp.float32)
  delta = jnp.zeros((s.shape[0], 1), jnp.float32)
  for c0 in _channel_starts(branch):
    do = _read(do_ref, n, c, start=c0, size=cs)
    dv = _dot(p_low, do, (0, 0))
    if merge:
      dv = dv + _read(dv_prev_ref, n, c, start=c0, size=cs)
    else:
      out = _read(delta_or_out_ref, n, c, start=c0, size=cs)
      delta = delta + jnp.sum(
          do.astype(jnp.float32) * out.astype(jnp.float32), axis=1, keepdims=True
      )
    _write(dv_ref, dv, n, c, start=c0, size=cs)
    dp = dp + _dot(do, _read(v_ref, n, c, start=c0, size=cs), (1, 1))
  if merge:
    delta = _read(delta_or_out_ref, n, 1)
  else:
    _write(delta_out_ref, delta, n, 1)
  ds = p * (dp - delta)  # dq and dk in float32, as the einsum's gradients.
  dq = _dot(ds, k.astype(jnp.float32), (1, 0))
  dk = _dot(ds, q.astype(jnp.float32), (0, 0))
  if merge:
    dq = dq + _read(dq_prev_ref, n, kc)
    dk = dk + _read(dk_prev_ref, n, kc)
  _write(dq_ref, dq, n, kc)
  _write(dk_ref, dk, n, kc)


def _sequence_spec(branch: _Branch, block: int, channels: int) -> pl.BlockSpec:
  """Query block j of sequence i of batch b, read in place from the NHWC array."""
  if branch.strided:
    return pl.BlockSpec((None, block, None, channels), lambda b, i, j: (b, j, i, 0))
  return pl.BlockSpec((None, None, block, channels), lambda b, i, j: (b, i, j, 0))


def _whole_spec(branch: _Branch, channels: int) -> pl.BlockSpec:
  """All of sequence i of batch b, whatever the query block."""
  if branch.strided:
    return pl.BlockSpec((None, branch.seq, None, channels), lambda b, i, j: (b, 0, i, 0))
  return pl.BlockSpec((None, None, branch.seq, channels), lambda b, i, j: (b, i, 0, 0))


def _grid(branch: _Branch, shape, query_blocks: int) -> tuple[int, int, int]:
  return (shape[0], shape[2] if branch.strided else shape[1], query_blocks)


def _kernel_name(branch: _Branch, direction: str) -> str:
  return f"criss_cross_{'column' if branch.mask_diagonal else 'row'}_{direction}"


def _call(kernel, *args, interpret: bool, sizes: BlockSizes, **pallas_kwargs):
  """pallas_call lowered with Triton on GPU and Mosaic on TPU.

  On GPU the default would be Mosaic GPU, which stages whole blocks in shared
  memory; (L, C) = (128, 512) float32 blocks exceed it. The compiler parameters
  must match the platform, so the choice is made at lowering time.
  """
  if interpret:
    return pl.pallas_call(kernel, interpret=True, **pallas_kwargs)(*args)
  triton = pl_triton.CompilerParams(num_warps=sizes.num_warps, num_stages=sizes.num_stages)
  on_gpu = lambda *a: pl.pallas_call(kernel, compiler_params=triton, **pallas_kwargs)(*a)
  default = lambda *a: pl.pallas_call(kernel, **pallas_kwargs)(*a)
  return jax.lax.platform_dependent(*args, cuda=on_gpu, rocm=on_gpu, default=default)


def _branch_forward(branch: _Branch, q, k, v, previous, out_dtypes, options):
  """One branch's forward kernel: (*outputs in out_dtypes, lse).

  `previous` is the first branch's (o, lse), or None for the first branch.
  """
  kc, vc, bq = branch.key_block, branch.value_block, branch.query_block
  in_specs = [_sequence_spec(branch, bq, kc), _whole_spec(branch, kc), _whole_spec(branch, vc)]
  if previous is not None:
    in_specs += [_sequence_spec(branch, bq, vc), _sequence_spec(branch, bq, 1)]
  lse_shape = q.shape[:3] + (1,)
  return _call(
      functools.partial(_fwd_kernel, branch=branch, merge=previous is not None),
      q,
      k,
      v,
      *(previous or ()),
      interpret=options.interpret,
      sizes=options.sizes,
      grid=_grid(branch, q.shape, branch.seq // bq),
      in_specs=in_specs,
      # lse as (..., 1): a (query_block, 1) block keeps the kernels 2-D on every backend.
      out_specs=[_sequence_spec(branch, bq, vc)] * len(out_dtypes)
      + [_sequence_spec(branch, bq, 1)],
      out_shape=[jax.ShapeDtypeStruct(v.shape, dtype) for dtype in out_dtypes]
      + [jax.ShapeDtypeStruct(lse_shape, jnp.float32)],
      name=_kernel_name(branch, "fwd"),
  )


def _branch_backward(branch: _Branch, q, k, v, d_out, lse, delta_or_out, previous, options):
  """One branch's fused backward kernel; `previous` is the first one's (dq, dk, dv) or None."""
  kc, vc = branch.key_block, branch.value_block
  whole = functools.partial(_whole_spec, branch)
  in_specs = [whole(kc), whole(kc), whole(vc), whole(vc), whole(1)]
  in_specs.append(whole(vc) if previous is None else whole(1))
  f32 = lambda x: jax.ShapeDtypeStruct(x.shape, jnp.float32)
  if previous is None:
    out_shape = [f32(q), f32(k), f32(v), f32(lse)]
    out_specs = [whole(kc), whole(kc), whole(vc), whole(1)]
  else:
    in_specs += [whole(kc), whole(kc), whole(vc)]
    out_shape = [jax.ShapeDtypeStruct(x.shape, x.dtype) for x in (q, k, v)]
    out_specs = [whole(kc), whole(kc), whole(vc)]
  return _call(
      functools.partial(_bwd_kernel, branch=branch, merge=previous is not None),
      q,
      k,
      v,
      d_out,
      lse,
      delta_or_out,
      *(previous or ()),
      interpret=options.interpret,
      sizes=options.sizes,
      grid=_grid(branch, q.shape, 1),
      in_specs=in_specs,
      out_specs=out_specs,
      out_shape=out_shape,
      name=_kernel_name(branch, "bwd"),
  )


class _Options(NamedTuple):
  interpret: bool
  pad: bool
  sizes: BlockSizes


def _plan(q, v, options: _Options) -> tuple[_Branch, _Branch, bool]:
  """The two branches in kernel order, and whether the first runs on transposed maps.

  Triton (padded layout): the rows, then the columns read in place. Mosaic needs
  a block's last two dims whole or tiled, which a strided column is not: there
  the column branch runs first, as rows of the transposed (B, W, H, C) maps.
  """
  channels, pad, sizes = v.shape[-1], options.pad, options.sizes
  rows = _branch(False, False, q.shape, channels, pad, sizes)
  if pad:
    return rows, _branch(True, True, q.shape, channels, pad, sizes), False
  transposed = _swap(q).shape
  return _branch(True, False, transposed, channels, pad, sizes), rows, True


def _swap(x: Array) -> Array:
  return jnp.swapaxes(x, 1, 2)


def _forward(q, k, v, options, for_backward: bool = False):
  """(out, lse, out in float32 for the backward pass or None).

  The backward's delta = sum(dO * out) multiplies the output, so for narrower
  dtypes the kernel also writes it unrounded: from the bfloat16 output, delta's
  rounding error biases every dq and dk (measured at 97x97: dq's RMS error 3.5x
  that with the float32 copy, 1.9x the bfloat16 einsum's).
  """
  first, second, transposed = _plan(q, v, options)
  swap = _swap if transposed else lambda x: x
  previous = _branch_forward(first, swap(q), swap(k), swap(v), None, (jnp.float32,), options)
  previous = tuple(swap(x) for x in previous)
  keep_float32 = for_backward and v.dtype != jnp.float32
  out_dtypes = (v.dtype, jnp.float32) if keep_float32 else (v.dtype,)
  out, *rest = _branch_forward(second, q, k, v, previous, out_dtypes, options)
  return out, rest[-1], rest[0] if keep_float32 else None


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _criss_cross(q, k, v, options):
  return _forward(q, k, v, options)[0]


def _criss_cross_fwd(q, k, v, options):
  out, lse, out_float32 = _forward(q, k, v, options, for_backward=True)
  return out, (q, k, v, out if out_float32 is None else out_float32, lse)


def _criss_cross_bwd(options, residuals, d_out):
  q, k, v, out, lse = residuals
  first, second, transposed = _plan(q, v, options)
  swap = _swap if transposed else lambda x: x
  *previous, delta = _branch_backward(
      first, *(swap(x) for x in (q, k, v, d_out, lse, out)), None, options
  )
  previous = tuple(swap(x) for x in previous)
  return tuple(_branch_backward(second, q, k, v, d_out, lse, swap(delta), previous, options))


_criss_cross.defvjp(_criss_cross_fwd, _criss_cross_bwd)


def _platform_options(interpret: bool | None, pad: bool | None, sizes: BlockSizes):
  """{platform: _Options} as each platform runs the kernels, with the caller's overrides.

  Triton (GPU) needs power-of-two blocks; Mosaic (TPU) and the interpreter (every
  other platform) take whole unpadded sequences.
  """
  choose = lambda given, default: default if given is None else bool(given)
  gpu = _Options(choose(interpret, False), choose(pad, True), sizes)
  return {
      "cuda": gpu,
      "rocm": gpu,
      "tpu": _Options(choose(interpret, False), choose(pad, False), sizes),
      "default": _Options(choose(interpret, True), choose(pad, False), sizes),
  }


def _on_lowering_platform(q, k, v, options: dict[str, _Options]) -> Array:
  """The kernels configured for the platform the program is lowered for."""
  if len(set(options.values())) == 1:
    return _criss_cross(q, k, v, options["default"])
  branches = {
      platform: functools.partial(_criss_cross, options=option)
      for platform, option in options.items()
  }
  return jax.lax.platform_dependent(q, k, v, **branches)


def _batch_axes(batch: int) -> tuple[str, ...]:
  """The axes of the mesh in context that the batch can be split over (none: unsplit)."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty:
    return ()
  axes = tuple(
      name
      for name, kind in zip(mesh.axis_names, mesh.axis_types)
      if kind != jax.sharding.AxisType.Manual
  )
  devices = 1
  for name in axes:
    devices *= mesh.shape[name]
  return axes if devices > 1 and batch % devices == 0 else ()


def criss_cross_attention_pallas(
    q: Array,
    k: Array,
    v: Array,
    *,
    block_sizes: BlockSizes | None = None,
    interpret: bool | None = None,
    pad_to_power_of_two: bool | None = None,
) -> Array:
  """Criss-cross attention with the semantics of ``ops.criss_cross_attention``.

  XLA cannot partition a kernel: under a mesh (``jax.set_mesh``, or
  ``jax.sharding.use_abstract_mesh`` inside a jitted step) the kernels run on each
  device's images, inside ``jax.shard_map`` with the batch split over the mesh's
  axes. Attention is independent per image, so no collective is needed.

  Args:
    q: queries (B, H, W, C').
    k: keys (B, H, W, C').
    v: values (B, H, W, C).
    block_sizes: the kernels' tunables; None means ``BlockSizes()``.
    interpret: run the kernels in the Pallas interpreter; None means on the
      platforms without a kernel compiler (neither GPU nor TPU).
    pad_to_power_of_two: round blocks up to powers of two >= 16 and mask their
      edges, as Triton requires; None means on GPU only. Mosaic (TPU) and the
      interpreter take whole unpadded sequences.

  Both None-defaults are decided when the program is lowered, for the platform it
  is lowered for (``jax.lax.platform_dependent``), not for the host that traces it.

  Returns:
    The context (B, H, W, C) in v's dtype; energies and softmax in float32.
  """
  _check_inputs(q, k, v)
  sizes = BlockSizes() if block_sizes is None else block_sizes
  options = _platform_options(interpret, pad_to_power_of_two, sizes)
  attend = functools.partial(_on_lowering_platform, options=options)
  axes = _batch_axes(q.shape[0])
  if not axes:
    return attend(q, k, v)
  spec = jax.sharding.PartitionSpec(axes)
  return jax.shard_map(attend, in_specs=(spec, spec, spec), out_specs=spec, check_vma=False)(
      q, k, v
  )
