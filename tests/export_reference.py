"""What the export tests compare against: the network run by JAX on images normalised in numpy.

An export must reproduce the preprocessing and the network; the reference does the first in
numpy (BGR, mean, std), independently of ``Preprocessing.normalize``. An export runs the same
float32 arithmetic in another order (its runtime's kernels, matmuls for the attention's
einsums), so it is held to a float64 truth, the same weights in a float64 network on images
normalised in float64: within FACTOR x JAX's own float32 error (tests/numerics.py). Measured
up to 1.11 (StableHLO, SavedModel, TFLite, ONNX Runtime; default flags and README's
second XLA configuration). A wrong mean, channel order or weight errs by a fraction of the
logits.
"""

import jax
import numpy as np
from flax import nnx

from ccnet_jax.models import model_dir
from ccnet_jax.models.preprocessing import Preprocessing
from ccnet_jax.models.registry import construct_model
from tests import numerics

FACTOR = 4
# Two sizes (odd and even, batch 1 and 2) for the exports of any size.
SHAPES = ((1, 33, 41, 3), (2, 40, 24, 3))


def images(shape, seed=0):
  return np.random.default_rng(seed).uniform(0, 255, shape).astype(np.float32)


@nnx.jit
def _forward(model, x):
  return model(x)[0]


def normalised(preprocessing: Preprocessing, rgb, dtype):
  """``rgb`` as the network's input in ``dtype``, in numpy (BGR, mean, std)."""
  assert preprocessing.channel_order == "bgr"
  bgr = np.asarray(rgb, dtype)[..., ::-1]
  return (bgr - np.asarray(preprocessing.mean, dtype)) / np.asarray(preprocessing.std, dtype)


def reference_logits(model: nnx.Module, preprocessing: Preprocessing, rgb) -> np.ndarray:
  """``model`` on ``rgb`` normalised in numpy, as its BGR ``preprocessing`` says."""
  return np.asarray(_forward(model, normalised(preprocessing, rgb, np.float32)))


def float64_twin(model: nnx.Module, config) -> nnx.Module:
  """``model``'s weights in a float64 network built from ``config`` (under jax.enable_x64)."""
  config = config.copy_and_resolve_references()
  config.dtype = "float64"
  twin = model_dir.empty_module(lambda: construct_model(config))
  nnx.update(twin, numerics.in_float64(nnx.state(model, (nnx.Param, nnx.BatchStat))))
  twin.eval()
  return twin


def truth_logits(model: nnx.Module, config, preprocessing: Preprocessing, rgb) -> np.ndarray:
  """``reference_logits`` in float64: the float64 twin on images normalised in float64."""
  with jax.enable_x64(True):
    twin = float64_twin(model, config)
    return np.asarray(_forward(twin, normalised(preprocessing, rgb, np.float64)))


def assert_reproduces_jax(got, model: nnx.Module, config, preprocessing: Preprocessing, rgb):
  """``got``, an export's logits for ``rgb``, as accurate as JAX's own float32 logits."""
  want = reference_logits(model, preprocessing, rgb)
  assert got.shape == want.shape and np.abs(want).max() > 1e-3
  truth = truth_logits(model, config, preprocessing, rgb)
  numerics.assert_as_accurate_as(np.asarray(got), want, truth, factor=FACTOR)
