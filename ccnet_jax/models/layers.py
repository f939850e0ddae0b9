"""Building blocks that reproduce PyTorch's convolution, pooling and norm semantics.

Official CCNet and mmsegmentation weights are loaded into these layers, so their
output shapes and values must match ``torch.nn`` exactly: convolutions use
explicit symmetric padding ``dilation * (k // 2)`` (not 'SAME', which pads
asymmetrically for strided convolutions), and max pooling supports ``ceil_mode``.
Convolutions start from ``torch.nn.Conv2d``'s initialisation; ``models.init_schemes``
redraws them as each recipe's reference code does.
"""

from __future__ import annotations

import functools
import math
from typing import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from ccnet_jax.models import initializers
from ccnet_jax.models.remat import tag_conv_output
from ccnet_jax.ops.dilated_conv import get_dilated_conv

Array = jax.Array
Dtype = jnp.dtype | None

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
    raise ValueError(f"Unknown activation {name!r}; use one of {sorted(ACTIVATIONS)}.") from None


class Conv2d(nnx.Conv):
  """``nnx.Conv`` whose output is named for rematerialisation (see ``models.remat``)."""

  def __call__(self, x: Array) -> Array:
    return tag_conv_output(super().__call__(x))


def conv2d(
    in_features: int,
    out_features: int,
    kernel_size: int,
    *,
    stride: int = 1,
    dilation: int = 1,
    dilated_conv: str = "auto",
    use_bias: bool = False,
    dtype: Dtype = None,
    rngs: nnx.Rngs,
) -> Conv2d:
  """A square convolution padded and initialised like
  ``torch.nn.Conv2d(padding=dilation * (k // 2))``.

  A dilated one is computed in the form ``dilated_conv`` names (``ops.dilated_conv``).
  """
  pad = dilation * (kernel_size // 2)
  conv_fn = get_dilated_conv(dilated_conv) if dilation > 1 else jax.lax.conv_general_dilated
  return Conv2d(
      in_features,
      out_features,
      (kernel_size, kernel_size),
      strides=stride,
      padding=((pad, pad), (pad, pad)),
      kernel_dilation=dilation,
      use_bias=use_bias,
      dtype=dtype,
      kernel_init=initializers.torch_conv_kernel,
      bias_init=initializers.torch_conv_bias(in_features * kernel_size**2),
      conv_general_dilated=conv_fn,
      rngs=rngs,
  )


class BatchNorm(nnx.BatchNorm):
  """``torch.nn.BatchNorm2d`` / InPlaceABN in train mode, which flax's BatchNorm is not quite.

  Two differences from ``nnx.BatchNorm``: the running variance moves towards the
  unbiased batch variance (times n / (n - 1), n the number of values per channel
  of the global batch), as torch and InPlaceABN update it; and the statistics are
  reduced, and the input normalised, in float32 (or float64) whatever the compute
  dtype, the output alone being cast back. ``use_fast_variance`` chooses
  E[x^2] - E[x]^2 (one pass) over E[(x - E[x])^2] (two passes, the accurate one:
  the one-pass form loses the variance when a channel's mean is large against its
  standard deviation, as after a ReLU in a trained ResNet).
  """

  def __call__(self, x: Array, use_running_average: bool | None = None) -> Array:
    if use_running_average is None:
      use_running_average = self.use_running_average
    stats_dtype = jnp.promote_types(x.dtype, jnp.float32)
    x_stats = x.astype(stats_dtype)
    axes = tuple(range(x.ndim - 1))
    if use_running_average:
      mean, var = self.mean[...].astype(stats_dtype), self.var[...].astype(stats_dtype)
    else:
      mean, var = self._batch_statistics(x_stats, axes)
    scale = self.scale[...].astype(stats_dtype)
    y = (x_stats - mean) * (jax.lax.rsqrt(var + self.epsilon) * scale)
    y = y + self.bias[...].astype(stats_dtype)
    return y.astype(self.dtype or x.dtype)

  def _batch_statistics(self, x: Array, axes: tuple[int, ...]) -> tuple[Array, Array]:
    """Biased mean and variance of this batch; moves the running ones (unbiased variance)."""
    mean = x.mean(axes)
    if self.use_fast_variance:
      var = jnp.maximum(jnp.mean(jnp.square(x), axes) - jnp.square(mean), 0.0)
    else:
      var = jnp.mean(jnp.square(x - mean), axes)
    count = math.prod(x.shape[a] for a in axes)
    unbiased = var * (count / max(count - 1, 1))
    momentum = self.momentum
    self.mean[...] = jax.lax.stop_gradient(
        momentum * self.mean[...] + (1 - momentum) * mean.astype(self.mean[...].dtype)
    )
    self.var[...] = jax.lax.stop_gradient(
        momentum * self.var[...] + (1 - momentum) * unbiased.astype(self.var[...].dtype)
    )
    return mean, var


def batch_norm(num_features: int, *, dtype: Dtype = None, rngs: nnx.Rngs) -> BatchNorm:
  """BatchNorm with PyTorch's defaults (eps 1e-5, running-stat momentum 0.1).

  Statistics are reduced over every axis but channels of the (global) batch, so
  under ``jit`` with a batch-sharded input they are synchronised across devices.
  The two-pass variance is the default; ``build_model`` sets ``use_fast_variance``
  from ``model.bn_fast_variance``.
  """
  return BatchNorm(
      num_features, momentum=0.9, epsilon=1e-5, use_fast_variance=False, dtype=dtype, rngs=rngs
  )


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
  """NHWC max pooling equal to ``torch.nn.functional.max_pool2d`` (ceil_mode too).

  ceil_mode pads ``stride - 1`` more on the right, so that the window that rounding up adds
  exists. PyTorch drops that window when it would start inside the right padding, which can
  happen only when ``padding + stride - 1 >= kernel``: otherwise (the ResNet stems' 3/2/1)
  the padding is the same for every size, which keeps it a constant in shape-polymorphic
  exports. The explicit ``-inf`` pad and an unpadded ``nnx.max_pool`` convert to ONNX as
  ``Pad`` + a 2-D ``MaxPool`` (a padded ``reduce_window`` becomes a 4-D one that ONNX Runtime
  refuses); XLA folds the pad back into the pooling window.
  """
  pads = [(0, 0)]
  for size in x.shape[1:3]:
    if ceil_mode and padding + stride - 1 < kernel:
      extra = stride - 1
    else:
      out = pooled_size(size, kernel, stride, padding, ceil_mode)
      extra = max((out - 1) * stride + kernel - (size + 2 * padding), 0)
    pads.append((padding, padding + extra))
  pads.append((0, 0))
  x = jnp.pad(x, pads, constant_values=-jnp.inf)
  return nnx.max_pool(x, window_shape=(kernel, kernel), strides=(stride, stride), padding="VALID")


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
