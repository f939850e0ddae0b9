"""Building blocks that reproduce PyTorch's convolution, pooling and norm semantics.

Official CCNet and mmsegmentation weights are loaded into these layers, so their
output shapes and values must match ``torch.nn`` exactly: convolutions use
explicit symmetric padding ``dilation * (k // 2)`` (not 'SAME', which pads
asymmetrically for strided convolutions), and max pooling supports ``ceil_mode``.
"""

from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp
from flax import nnx

Array = jax.Array
Dtype = jnp.dtype | None

# He-normal over fan-out, as torchvision and mmseg initialise conv kernels.
conv_kernel_init = nnx.initializers.variance_scaling(2.0, "fan_out", "normal")

ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    "relu": jax.nn.relu,
    # inplace_abn's default, used by every norm of the official CCNet head.
    "leaky_relu": functools.partial(jax.nn.leaky_relu, negative_slope=0.01),
    "identity": lambda x: x,
}


def get_activation(name: str) -> Callable[[Array], Array]:
  try:
    return ACTIVATIONS[name]
  except KeyError:
    raise ValueError(
        f"Unknown activation {name!r}; use one of {sorted(ACTIVATIONS)}."
    ) from None


def conv2d(
    in_features: int,
    out_features: int,
    kernel_size: int,
    *,
    stride: int = 1,
    dilation: int = 1,
    use_bias: bool = False,
    dtype: Dtype = None,
    rngs: nnx.Rngs,
) -> nnx.Conv:
  """A square convolution padded like ``torch.nn.Conv2d(padding=dilation * (k // 2))``."""
  pad = dilation * (kernel_size // 2)
  return nnx.Conv(
      in_features,
      out_features,
      (kernel_size, kernel_size),
      strides=stride,
      padding=((pad, pad), (pad, pad)),
      kernel_dilation=dilation,
      use_bias=use_bias,
      dtype=dtype,
      kernel_init=conv_kernel_init,
      rngs=rngs,
  )


def batch_norm(num_features: int, *, dtype: Dtype = None, rngs: nnx.Rngs) -> nnx.BatchNorm:
  """BatchNorm with PyTorch's defaults (eps 1e-5, running-stat momentum 0.1).

  Statistics are reduced over every axis but channels of the (global) batch, so
  under ``jit`` with a batch-sharded input they are synchronised across devices.
  """
  return nnx.BatchNorm(num_features, momentum=0.9, epsilon=1e-5, dtype=dtype, rngs=rngs)


def pooled_size(size: int, kernel: int, stride: int, padding: int, ceil_mode: bool) -> int:
  """Output length of ``torch.nn.MaxPool2d`` along one axis.

  Integer arithmetic only, so that it also holds for symbolic sizes (shape-polymorphic
  export).
  """
  span = size + 2 * padding - kernel
  if not ceil_mode:
    return span // stride + 1
  # PyTorch drops a last window that would start inside the right padding: the last
  # start, (out - 1) * stride, must stay below size + padding.
  return min(-(-span // stride), (size + padding - 1) // stride) + 1


def max_pool(
    x: Array, *, kernel: int = 3, stride: int = 2, padding: int = 1, ceil_mode: bool = False
) -> Array:
  """NHWC max pooling equal to ``torch.nn.functional.max_pool2d`` (ceil_mode too)."""
  pads = [(0, 0)]
  for size in x.shape[1:3]:
    out = pooled_size(size, kernel, stride, padding, ceil_mode)
    extra = max((out - 1) * stride + kernel - (size + 2 * padding), 0)
    pads.append((padding, padding + extra))
  pads.append((0, 0))
  return jax.lax.reduce_window(
      x,
      -jnp.inf,
      jax.lax.max,
      window_dimensions=(1, kernel, kernel, 1),
      window_strides=(1, stride, stride, 1),
      padding=pads,
  )


class ConvNormAct(nnx.Module):
  """conv -> BatchNorm -> activation, the unit of every head (InPlaceABN / ConvModule)."""

  def __init__(
      self,
      in_features: int,
      out_features: int,
      kernel_size: int = 3,
      *,
      use_bias: bool = False,
      activation: str = "relu",
      dtype: Dtype = None,
      rngs: nnx.Rngs,
  ):
    self.conv = conv2d(
        in_features, out_features, kernel_size, use_bias=use_bias, dtype=dtype, rngs=rngs
    )
    self.norm = batch_norm(out_features, dtype=dtype, rngs=rngs)
    self.activation = activation

  def __call__(self, x: Array) -> Array:
    return get_activation(self.activation)(self.norm(self.conv(x)))


def channel_dropout(rate: float, *, rngs: nnx.Rngs) -> nnx.Dropout:
  """Dropout of whole channels (``torch.nn.Dropout2d``) for NHWC maps."""
  return nnx.Dropout(rate, broadcast_dims=(1, 2), rngs=rngs)
