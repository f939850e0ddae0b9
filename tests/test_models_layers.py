"""Convolutions and pooling equal to torch.nn on odd and even sizes."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized
from flax import nnx

from ccnet_jax.models import layers

torch = pytest.importorskip("torch")
F = torch.nn.functional


def _to_torch(x):  # NHWC -> NCHW
  return torch.from_numpy(np.array(x)).permute(0, 3, 1, 2)


def _from_torch(x):  # NCHW -> NHWC
  return x.permute(0, 2, 3, 1).numpy()


class ConvTest(parameterized.TestCase):

  @parameterized.product(
      size=[(13, 13), (12, 17)],
      kernel=[1, 3, 7],
      stride=[1, 2],
      dilation=[1, 2],
  )
  def test_conv2d_matches_torch(self, size, kernel, stride, dilation):
    conv = layers.conv2d(3, 4, kernel, stride=stride, dilation=dilation, use_bias=True,
                         rngs=nnx.Rngs(0))
    conv.bias[...] = jax.random.normal(jax.random.key(1), (4,))
    x = jax.random.normal(jax.random.key(2), (2, *size, 3))
    expected = F.conv2d(
        _to_torch(x),
        torch.from_numpy(np.array(conv.kernel[...])).permute(3, 2, 0, 1),  # HWIO -> OIHW
        torch.from_numpy(np.array(conv.bias[...])),
        stride=stride,
        padding=dilation * (kernel // 2),
        dilation=dilation,
    )
    chex.assert_trees_all_close(conv(x), _from_torch(expected), atol=1e-5)


class MaxPoolTest(parameterized.TestCase):

  @parameterized.product(size=[5, 6, 7, 96, 97, 192, 193, 385], ceil_mode=[True, False])
  def test_max_pool_matches_torch(self, size, ceil_mode):
    x = jax.random.normal(jax.random.key(size), (1, size, size + 1, 2))
    expected = F.max_pool2d(_to_torch(x), 3, stride=2, padding=1, ceil_mode=ceil_mode)
    out = layers.max_pool(x, kernel=3, stride=2, padding=1, ceil_mode=ceil_mode)
    np.testing.assert_array_equal(np.asarray(out), _from_torch(expected))

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
