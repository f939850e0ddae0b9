"""Dilated convolutions whose weight gradient is a stride-1 convolution.

JAX differentiates ``lax.conv_general_dilated(x, w, rhs_dilation=d)`` with respect to
``w`` as a convolution of ``x`` with the output gradient as its window, strided by ``d``.
XLA's GPU backend hands cuDNN backward-filter convolutions of stride 1 only, so there
the weight gradient of every dilated 3x3 convolution of a dilated ResNet stays a forward
convolution whose filter is the whole output gradient (a 97x97 window at the Cityscapes
crop) and whose output channels are the batch: a shape that tensor cores run badly.

Space-to-batch removes the dilation. With stride 1, output row ``d*m + r`` of a conv of
dilation ``d`` reads the padded input rows ``d*(m + k) + r``: phase ``r`` of the input
only. Folding the ``d x d`` phases of the padded input into the batch turns the dilated
conv into a plain conv of each phase (dilation 1, stride 1); unfolding and cropping its
output gives the dilated conv's output exactly. Its input and weight gradients are then
ordinary stride-1 convolutions too. A stride ``s`` that divides ``d`` keeps one phase
in ``s`` along each axis. The phases are padded to whole multiples of ``d``, which costs
a few per cent more products than the dilated conv (2-6% on the Cityscapes maps).

Implementations (``model.dilated_conv``), each with the signature of
``lax.conv_general_dilated`` on NHWC inputs and HWIO kernels:

- ``lax``: XLA's dilated convolution and its own gradients.
- ``space_to_batch``: forward, input and weight gradients on the folded phases.
- ``space_to_batch_wgrad``: XLA's dilated forward and input gradient (cuDNN runs both
  as dilated convolutions), the weight gradient on the folded phases.
- ``auto``: chosen when the program is lowered, for the platform it is lowered for
  (``jax.lax.platform_dependent``): see :data:`AUTO`.
"""

from __future__ import annotations

import functools
from typing import Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
from jax import lax

Array = jax.Array
ConvFn = Callable[..., Array]

_NHWC = lax.ConvDimensionNumbers(
    lhs_spec=(0, 3, 1, 2), rhs_spec=(3, 2, 0, 1), out_spec=(0, 3, 1, 2)
)


class _Geometry(NamedTuple):
  """The static arguments of one convolution, hashable (a ``custom_vjp`` static argument)."""

  strides: tuple[int, int]
  padding: tuple[tuple[int, int], tuple[int, int]]
  dilation: tuple[int, int]
  feature_group_count: int
  precision: object
  preferred_element_type: object


def _lax_conv(lhs: Array, rhs: Array, geometry: _Geometry) -> Array:
  return lax.conv_general_dilated(
      lhs,
      rhs,
      geometry.strides,
      geometry.padding,
      rhs_dilation=geometry.dilation,
      dimension_numbers=_NHWC,
      feature_group_count=geometry.feature_group_count,
      precision=geometry.precision,
      preferred_element_type=geometry.preferred_element_type,
  )


class _Axis(NamedTuple):
  """How one spatial axis is folded: phases of `dilation`, `kept` of them, `length` each."""

  dilation: int
  stride: int
  kernel: int
  pad_low: int
  size: int  # The padded input length the phases are cut from: dilation * length.
  length: int  # Rows of one phase.
  out: int  # Output length of the dilated convolution.

  @property
  def kept(self) -> int:
    return self.dilation // self.stride


def _axis(size: int, kernel: int, stride: int, dilation: int, pads: tuple[int, int]) -> _Axis:
  out = (size + pads[0] + pads[1] - dilation * (kernel - 1) - 1) // stride + 1
  kept = dilation // stride
  length = (out - 1) // kept + kernel  # Each kept phase yields `length - kernel + 1` outputs.
  return _Axis(dilation, stride, kernel, pads[0], dilation * length, length, out)


def _fold(x: Array, rows: _Axis, cols: _Axis) -> Array:
  """(B, H, W, C) -> (B * kept_h * kept_w, length_h, length_w, C): the phases as images.

  The image index stays the major part of the new batch, so a batch split over
  devices stays split the same way (no device needs another's phases).
  """
  batch, height, width, channels = x.shape
  pads = []
  for axis, size in ((rows, height), (cols, width)):
    # Outputs past the dilated conv's read only padding beyond `size`: pad, or cut, to it.
    pads.append((axis.pad_low, axis.size - size - axis.pad_low, 0))
  x = lax.pad(x, jnp.zeros((), x.dtype), [(0, 0, 0), *pads, (0, 0, 0)])
  x = x.reshape(batch, rows.length, rows.dilation, cols.length, cols.dilation, channels)
  x = x[:, :, :: rows.stride, :, :: cols.stride, :]
  x = x.transpose(0, 2, 4, 1, 3, 5)
  return x.reshape(batch * rows.kept * cols.kept, rows.length, cols.length, channels)


def _unfold(y: Array, rows: _Axis, cols: _Axis, batch: int) -> Array:
  """The phases' outputs interleaved back into one (B, out_h, out_w, C) map."""
  _, height, width, channels = y.shape
  y = y.reshape(batch, rows.kept, cols.kept, height, width, channels)
  y = y.transpose(0, 3, 1, 4, 2, 5)
  y = y.reshape(batch, height * rows.kept, width * cols.kept, channels)
  return y[:, : rows.out, : cols.out, :]


def _foldable(geometry: _Geometry) -> bool:
  """Whether space-to-batch applies: every stride divides its dilation, no negative pad."""
  return all(d % s == 0 for s, d in zip(geometry.strides, geometry.dilation)) and all(
      p >= 0 for pair in geometry.padding for p in pair
  )


def _space_to_batch_conv(lhs: Array, rhs: Array, geometry: _Geometry) -> Array:
  if not _foldable(geometry):
    return _lax_conv(lhs, rhs, geometry)
  rows, cols = (
      _axis(lhs.shape[1 + i], rhs.shape[i], geometry.strides[i], geometry.dilation[i], pads)
      for i, pads in enumerate(geometry.padding)
  )
  plain = geometry._replace(strides=(1, 1), padding=((0, 0), (0, 0)), dilation=(1, 1))
  y = _lax_conv(_fold(lhs, rows, cols), rhs, plain)
  return _unfold(y, rows, cols, lhs.shape[0])


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _lax_conv_phase_wgrad(lhs: Array, rhs: Array, geometry: _Geometry) -> Array:
  return _lax_conv(lhs, rhs, geometry)


def _phase_wgrad_fwd(lhs, rhs, geometry):
  return _lax_conv(lhs, rhs, geometry), (lhs, rhs)


def _phase_wgrad_bwd(geometry, residuals, d_out):
  lhs, rhs = residuals
  _, input_vjp = jax.vjp(lambda x: _lax_conv(x, rhs, geometry), lhs)
  _, weight_vjp = jax.vjp(lambda w: _space_to_batch_conv(lhs, w, geometry), rhs)
  return input_vjp(d_out)[0], weight_vjp(d_out)[0]


_lax_conv_phase_wgrad.defvjp(_phase_wgrad_fwd, _phase_wgrad_bwd)


_FORMS: dict[str, Callable[[Array, Array, _Geometry], Array]] = {
    "lax": _lax_conv,
    "space_to_batch": _space_to_batch_conv,
    "space_to_batch_wgrad": _lax_conv_phase_wgrad,
}

# What `auto` lowers to, by platform ('default': every platform not named). GPU: cuDNN
# runs dilated forward and input-gradient convolutions, so only the weight gradient
# moves to the phases. TPU and CPU: XLA's own form (the phases' extra products and copies
# have not been weighed against it there).
AUTO = {"cuda": "space_to_batch_wgrad", "rocm": "space_to_batch_wgrad", "default": "lax"}


def _auto(lhs: Array, rhs: Array, geometry: _Geometry) -> Array:
  branches = {
      platform: functools.partial(_FORMS[form], geometry=geometry)
      for platform, form in AUTO.items()
  }
  return lax.platform_dependent(lhs, rhs, **branches)


def dilated_conv_implementations() -> tuple[str, ...]:
  """Names accepted by :func:`get_dilated_conv`."""
  return tuple(sorted(_FORMS)) + ("auto",)


def _geometry(lhs, rhs, window_strides, padding, rhs_dilation, **options) -> _Geometry:
  if isinstance(padding, str):
    dilated = [(k - 1) * d + 1 for k, d in zip(rhs.shape[:2], rhs_dilation)]
    padding = lax.padtype_to_pads(lhs.shape[1:3], dilated, window_strides, padding)
  return _Geometry(
      tuple(window_strides),
      tuple(tuple(pair) for pair in padding),
      tuple(rhs_dilation),
      options["feature_group_count"],
      options["precision"],
      options["preferred_element_type"],
  )


def _as_conv_fn(form: Callable[[Array, Array, _Geometry], Array], name: str) -> ConvFn:
  """``form`` behind the signature of ``lax.conv_general_dilated`` (NHWC / HWIO only)."""

  def conv(
      lhs: Array,
      rhs: Array,
      window_strides: Sequence[int],
      padding,
      lhs_dilation: Sequence[int] | None = None,
      rhs_dilation: Sequence[int] | None = None,
      dimension_numbers=None,
      feature_group_count: int = 1,
      batch_group_count: int = 1,
      precision=None,
      preferred_element_type=None,
      out_sharding=None,
  ) -> Array:
    rhs_dilation = tuple(rhs_dilation or (1, 1))
    dimension_numbers = lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
    plain = (
        dimension_numbers != _NHWC
        or lhs.ndim != 4
        or all(d == 1 for d in rhs_dilation)
        or any(d != 1 for d in lhs_dilation or ())
        or batch_group_count != 1
        or out_sharding is not None
    )
    if plain:  # Not a layout or a kind of convolution this module folds.
      return lax.conv_general_dilated(
          lhs,
          rhs,
          window_strides,
          padding,
          lhs_dilation=lhs_dilation,
          rhs_dilation=rhs_dilation,
          dimension_numbers=dimension_numbers,
          feature_group_count=feature_group_count,
          batch_group_count=batch_group_count,
          precision=precision,
          preferred_element_type=preferred_element_type,
          out_sharding=out_sharding,
      )
    geometry = _geometry(
        lhs,
        rhs,
        window_strides,
        padding,
        rhs_dilation,
        feature_group_count=feature_group_count,
        precision=precision,
        preferred_element_type=preferred_element_type,
    )
    return form(lhs, rhs, geometry)

  conv.__name__ = conv.__qualname__ = f"dilated_conv_{name}"
  return conv


# Module-level functions, so that modules holding one compare equal across builds.
_CONV_FNS: dict[str, ConvFn] = {
    name: _as_conv_fn(form, name) for name, form in {**_FORMS, "auto": _auto}.items()
}


def get_dilated_conv(impl: str) -> ConvFn:
  """The convolution function named by ``model.dilated_conv``.

  It has the signature of ``lax.conv_general_dilated`` (what ``nnx.Conv`` calls) and
  folds NHWC / HWIO convolutions; any other layout goes to ``lax.conv_general_dilated``.
  """
  try:
    return _CONV_FNS[impl]
  except KeyError:
    raise ValueError(
        f"model.dilated_conv={impl!r} is not a form of dilated convolution; use one of"
        f" {dilated_conv_implementations()}."
    ) from None
