"""Convolutions and pooling equal to torch.nn on odd and even sizes."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized
from flax import nnx

from ccnet_jax.models import layers
from tests import numerics

torch = pytest.importorskip("torch")
F = torch.nn.functional

# Against PyTorch float64, allowed FLOAT32_FACTOR x PyTorch float32's own error
# (tests/numerics.py). Measured up to 0.94x for the convolutions and 2.8x for BatchNorm's
# output, which normalises by statistics summed in another order (both XLA configurations
# of README's test command).
FLOAT32_FACTOR = 8


def _to_torch(x):  # NHWC -> NCHW
  return torch.from_numpy(np.array(x)).permute(0, 3, 1, 2)


def _from_torch(x):  # NCHW -> NHWC
  return x.permute(0, 2, 3, 1).numpy()


@pytest.mark.numeric
class ConvTest(parameterized.TestCase):

  @parameterized.product(
      size=[(13, 13), (12, 17)],
      kernel=[1, 3, 7],
      stride=[1, 2],
      dilation=[1, 2],
  )
  def test_conv2d_matches_torch(self, size, kernel, stride, dilation):
    conv = layers.conv2d(
        3, 4, kernel, stride=stride, dilation=dilation, use_bias=True, rngs=nnx.Rngs(0)
    )
    conv.bias[...] = jax.random.normal(jax.random.key(1), (4,))
    x = jax.random.normal(jax.random.key(2), (2, *size, 3))

    def torch_conv(dtype):
      return _from_torch(
          F.conv2d(
              _to_torch(x).to(dtype),
              torch.from_numpy(np.array(conv.kernel[...])).permute(3, 2, 0, 1).to(dtype),  # OIHW
              torch.from_numpy(np.array(conv.bias[...])).to(dtype),
              stride=stride,
              padding=dilation * (kernel // 2),
              dilation=dilation,
          )
      )

    numerics.assert_as_accurate_as(
        conv(x), torch_conv(torch.float32), torch_conv(torch.float64), factor=FLOAT32_FACTOR
    )


class MaxPoolTest(parameterized.TestCase):

  @parameterized.product(size=[5, 6, 7, 96, 97, 192, 193, 385], ceil_mode=[True, False])
  def test_max_pool_matches_torch(self, size, ceil_mode):
    x = jax.random.normal(jax.random.key(size), (1, size, size + 1, 2))
    expected = F.max_pool2d(_to_torch(x), 3, stride=2, padding=1, ceil_mode=ceil_mode)
    out = layers.max_pool(x, kernel=3, stride=2, padding=1, ceil_mode=ceil_mode)
    np.testing.assert_array_equal(np.asarray(out), _from_torch(expected))

  def test_max_pool_matches_torch_for_every_window(self):
    """Both paddings of ceil_mode (constant, and by size where PyTorch drops a window)."""
    checked = set()
    for size, kernel, stride, padding in itertools.product((6, 7), (2, 3), (1, 2, 3), (0, 1)):
      x = jax.random.normal(jax.random.key(size), (1, size, size, 1))
      for ceil_mode in (True, False):
        expected = F.max_pool2d(_to_torch(x), kernel, stride, padding, ceil_mode=ceil_mode)
        out = layers.max_pool(x, kernel=kernel, stride=stride, padding=padding, ceil_mode=ceil_mode)
        np.testing.assert_array_equal(np.asarray(out), _from_torch(expected))
        checked.add(ceil_mode and padding + stride - 1 < kernel)
    self.assertEqual(checked, {True, False})

  def test_pooled_size_matches_torch(self):
    checked = 0
    for size, kernel, stride, padding in np.ndindex(12, 4, 4, 2):
      if size == 0 or kernel < 2 or stride == 0 or padding > kernel // 2:
        continue  # torch rejects these configurations.
      if size + 2 * padding < kernel:
        continue
      for ceil_mode in (True, False):
        expected = F.max_pool2d(
            torch.zeros(1, 1, size, size), kernel, stride, padding, ceil_mode=ceil_mode
        ).shape[-1]
        got = layers.pooled_size(size, kernel, stride, padding, ceil_mode)
        self.assertEqual(got, expected, (size, kernel, stride, padding, ceil_mode))
        checked += 1
    self.assertGreater(checked, 100)


class ActivationTest(parameterized.TestCase):

  def test_leaky_relu_slope_is_inplace_abn_default(self):
    x = jnp.array([-2.0, 0.0, 3.0])
    np.testing.assert_allclose(
        layers.get_activation("leaky_relu")(x),
        F.leaky_relu(torch.tensor([-2.0, 0.0, 3.0]), 0.01).numpy(),
    )

  def test_unknown_activation(self):
    with pytest.raises(ValueError, match="Unknown activation 'gelu'"):
      layers.get_activation("gelu")

  def test_channel_dropout_drops_whole_channels(self):
    dropout = layers.channel_dropout(0.5, rngs=nnx.Rngs(dropout=0))
    y = dropout(jnp.ones((4, 5, 6, 32)))
    per_channel = y.reshape(4, 30, 32)
    # Each (image, channel) map is all zeros or all 2 (= 1 / keep probability).
    self.assertTrue(bool(jnp.all(per_channel.min(1) == per_channel.max(1))))
    self.assertTrue(set(np.unique(np.asarray(y))) == {0.0, 2.0})


def _channels_last_to_torch(x):
  return torch.from_numpy(np.ascontiguousarray(np.moveaxis(x, -1, 1)))


@pytest.mark.numeric
class BatchNormTest(parameterized.TestCase):
  """The model's BatchNorm in train mode against float64 numpy (and PyTorch float32)."""

  def _train_step(self, x, fast_variance=False):
    norm = layers.batch_norm(x.shape[-1], rngs=nnx.Rngs(0))
    norm.use_fast_variance = fast_variance
    norm.scale[...] = jnp.linspace(0.5, 1.5, x.shape[-1])
    norm.bias[...] = jnp.linspace(-0.2, 0.2, x.shape[-1])
    y = norm(jnp.asarray(x))
    return norm, np.asarray(y, np.float64)

  def test_running_variance_is_unbiased_as_torch(self):
    """One train step: output and running statistics against PyTorch's BatchNorm2d in
    float64 (whose running variance is the unbiased one), as close as its float32 run."""
    x = np.random.default_rng(0).normal(2.0, 3.0, size=(2, 5, 7, 4)).astype(np.float32)
    norm, y = self._train_step(x)

    def torch_step(dtype):
      reference = torch.nn.BatchNorm2d(4).to(dtype).train()
      with torch.no_grad():
        reference.weight.copy_(torch.linspace(0.5, 1.5, 4))
        reference.bias.copy_(torch.linspace(-0.2, 0.2, 4))
        out = reference(_channels_last_to_torch(x).to(dtype)).permute(0, 2, 3, 1)
      return [out.numpy(), reference.running_mean.numpy(), reference.running_var.numpy()]

    x64, n = x.astype(np.float64), 2 * 5 * 7
    truth = torch_step(torch.float64)
    np.testing.assert_allclose(truth[2], 0.9 + 0.1 * x64.var((0, 1, 2)) * n / (n - 1), rtol=1e-12)
    numerics.assert_as_accurate_as(
        [y, norm.mean[...], norm.var[...]], torch_step(torch.float32), truth, factor=FLOAT32_FACTOR
    )

  @parameterized.parameters(5.0, 50.0)
  def test_large_channel_means_within_pytorch_float32_error(self, mean_over_std):
    """Means far above the spread (post-ReLU channels of a trained ResNet): the
    statistics must not lose the variance, as E[x^2] - E[x]^2 in float32 does."""
    rng = np.random.default_rng(1)
    std = np.array([0.5, 1.0, 2.0, 4.0])
    x = (rng.normal(size=(4, 16, 16, 4)) * std + mean_over_std * std).astype(np.float32)
    x64, n = x.astype(np.float64), 4 * 16 * 16
    mean, var = x64.mean((0, 1, 2)), x64.var((0, 1, 2))
    scale, bias = np.linspace(0.5, 1.5, 4), np.linspace(-0.2, 0.2, 4)
    want_y = (x64 - mean) / np.sqrt(var + 1e-5) * scale + bias
    want_var = 0.9 + 0.1 * var * n / (n - 1)

    def errors(y, running_var):
      return (np.max(np.abs(y - want_y)), np.max(np.abs(running_var - want_var) / want_var))

    reference = torch.nn.BatchNorm2d(4).train()
    with torch.no_grad():
      reference.weight.copy_(torch.from_numpy(scale))
      reference.bias.copy_(torch.from_numpy(bias))
      torch_y = reference(_channels_last_to_torch(x)).permute(0, 2, 3, 1).double().numpy()
    torch_errors = errors(torch_y, reference.running_var.double().numpy())
    norm, y = self._train_step(x)
    ours = errors(y, np.asarray(norm.var[...], np.float64))
    fast_norm, fast_y = self._train_step(x, fast_variance=True)
    fast = errors(fast_y, np.asarray(fast_norm.var[...], np.float64))
    print(
        f"\nmean/std {mean_over_std}: output / running-var error: ours {ours[0]:.1e} /"
        f" {ours[1]:.1e}, PyTorch float32 {torch_errors[0]:.1e} / {torch_errors[1]:.1e},"
        f" one-pass variance {fast[0]:.1e} / {fast[1]:.1e}"
    )
    # The running variance is float32 in both: its rounding (6e-8) is the floor. The
    # outputs of both are at the rounding of x - mean in float32 (eps x mean/std in
    # units of std), where the order of operations decides: 2x is that noise.
    floor = np.finfo(np.float32).eps
    self.assertLessEqual(ours[0], 2 * torch_errors[0])
    self.assertLessEqual(ours[1], max(torch_errors[1], floor))
    if mean_over_std == 50.0:  # The one-pass form is what this test exists to catch.
      self.assertGreater(fast[0], 10 * torch_errors[0])

  def test_bfloat16_input_keeps_float32_statistics_in_eval_mode(self):
    norm = layers.batch_norm(3, dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
    norm.mean[...] = jnp.array([100.0, 200.5, 300.25])
    norm.var[...] = jnp.array([0.25, 1.0, 4.0])
    norm.use_running_average = True
    x = jnp.asarray([[[[100.5, 201.5, 302.25]]]], jnp.bfloat16)
    x64 = np.asarray(x, np.float64)[0, 0, 0]
    want = (x64 - [100.0, 200.5, 300.25]) / np.sqrt(np.array([0.25, 1.0, 4.0]) + 1e-5)
    y = norm(x)
    self.assertEqual(y.dtype, jnp.bfloat16)
    # Only the output's rounding to bfloat16 (2^-8 relative) remains.
    np.testing.assert_allclose(np.asarray(y, np.float64)[0, 0, 0], want, rtol=2**-8)
