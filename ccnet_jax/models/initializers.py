"""The initialisers of the reference PyTorch code, for HWIO kernels.

A flax kernel is (kh, kw, in, out) where torch's weight is (out, in, kh, kw); the fans
are torch's (``torch.nn.init._calculate_fan_in_and_fan_out``): fan_in = kh * kw * in,
fan_out = kh * kw * out, which is what ``variance_scaling`` computes for HWIO with its
default axes.
"""

from __future__ import annotations

import math
from typing import Callable

import jax
import jax.numpy as jnp
from flax import nnx

Initializer = Callable[..., jax.Array]

# torch.nn.Conv2d.reset_parameters (torch/nn/modules/conv.py): kaiming_uniform_(a=sqrt(5)),
# gain sqrt(2 / (1 + 5)), bound gain * sqrt(3 / fan_in) = 1 / sqrt(fan_in).
torch_conv_kernel: Initializer = nnx.initializers.variance_scaling(1 / 3, "fan_in", "uniform")


def torch_conv_bias(fan_in: int) -> Initializer:
  """torch.nn.Conv2d's bias: uniform on +-1 / sqrt(fan_in) of its weight."""
  bound = 1 / math.sqrt(fan_in)

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


def kaiming_normal_fan_out(negative_slope: float = 0.0) -> Initializer:
  """``torch.nn.init.kaiming_normal_(w, a=negative_slope, mode='fan_out')`` for a (leaky)
  ReLU: normal, untruncated, std sqrt(2 / (1 + a^2)) / sqrt(fan_out)."""
  return nnx.initializers.variance_scaling(2 / (1 + negative_slope**2), "fan_out", "normal")


def normal(std: float) -> Initializer:
  """``torch.nn.init.normal_(w, 0, std)``."""
  return nnx.initializers.normal(std)


def zeros_for_any_fan(fan_in: int) -> Initializer:  # pylint: disable=unused-argument
  """A bias set to 0 (mmcv's ``kaiming_init`` and ``normal_init``, bias=0)."""
  return nnx.initializers.zeros_init()


def fan_in(kernel_shape: tuple[int, ...]) -> int:
  """torch's fan_in of an HWIO kernel: kh * kw * in."""
  return math.prod(kernel_shape[:-1])
