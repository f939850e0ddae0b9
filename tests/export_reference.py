"""What the export tests compare against: the network run by JAX on images normalised in numpy.

An export must reproduce the preprocessing and the network; the reference does the first in
numpy (BGR, mean, std), independently of ``Preprocessing.normalize``.
"""

import numpy as np
from flax import nnx

from ccnet_jax.models.preprocessing import Preprocessing

# The exports run the same float32 program; only the order of summation (and fused
# multiply-adds) may differ from JAX's. A dot product of K terms then differs by about
# sqrt(K) * 2^-24 relative: K <= 9 * 80 here gives 2e-6 per layer, and ~20 layers in sequence,
# their errors adding in quadrature, about 1e-5 of the logits' scale. 1e-4 leaves a margin of
# 10 and still fails on any real difference (a wrong mean, channel order or weight).
EXACT_FRACTION = 1e-4
# Two sizes (odd and even, batch 1 and 2) for the exports of any size.
SHAPES = ((1, 33, 41, 3), (2, 40, 24, 3))


def images(shape, seed=0):
  return np.random.default_rng(seed).uniform(0, 255, shape).astype(np.float32)


@nnx.jit
def _forward(model, x):
  return model(x)[0]


def reference_logits(model: nnx.Module, preprocessing: Preprocessing, rgb) -> np.ndarray:
  """``model`` on ``rgb`` normalised in numpy, as its BGR ``preprocessing`` says."""
  assert preprocessing.channel_order == "bgr"
  bgr = np.asarray(rgb, np.float32)[..., ::-1]
  mean, std = np.float32(preprocessing.mean), np.float32(preprocessing.std)
  return np.asarray(_forward(model, (bgr - mean) / std))


def assert_close_to_scale(got, want, fraction):
  assert got.shape == want.shape
  scale = np.abs(want).max()
  assert scale > 1e-3
  np.testing.assert_allclose(got, want, rtol=0, atol=fraction * scale)
