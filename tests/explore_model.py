"""A tiny CCNet whose criss-cross attention reads the synthetic scenes' cue stripe, by design.

Random weights give no meaningful attention, and training one costs minutes. Here the key
projection is set to measure one direction of the attention's input features, the one that
separates the stripe's cells from the rest on a few demo scenes, and the query to a constant:
every pixel's energies are then high on stripe cells and low elsewhere, so its loop-1 weights
fall on the stripe of its own column. A test that clicks a pixel can then tell whether the maps
it is shown are that pixel's (a transposed, mirrored or shifted map puts the weight elsewhere).
"""

import contextlib
import fcntl

import jax.numpy as jnp
import numpy as np

from ccnet_jax.data import synthetic
from ccnet_jax.data.config import data_config
from ccnet_jax.data.labels import SYNTHETIC
from ccnet_jax.data.sources import build_source
from ccnet_jax.models import model_dir
from ccnet_jax.models.preprocessing import IMAGENET
from tests.helpers import randomised, tiny_model_config

ENERGY_GAP = 12.0  # Between the mean stripe cell and the mean other cell: e^12 more weight.


def demo_scene(index):
  config = data_config("synthetic")
  return build_source(config, config.eval_split)[index]


def stripe_rows(image_height, grid_height):
  """Grid rows whose align-corners position lies on the stripe (top rows of the image)."""
  rows = np.arange(grid_height) * (image_height - 1) / (grid_height - 1)
  return np.flatnonzero(rows < synthetic.stripe_height(image_height))


def save_stripe_reader(directory, seed=0):
  """Saves the model in ``directory``; returns it."""
  config = tiny_model_config(num_classes=SYNTHETIC.num_classes)
  model = randomised(config, seed=seed)
  images = np.stack([demo_scene(i)["image"] for i in range(8)])
  inputs = IMAGENET.normalize(images)
  features = np.asarray(model.head.conva(model.backbone(jnp.asarray(inputs))[3]), np.float64)
  on_stripe = np.zeros(features.shape[1], bool)
  on_stripe[stripe_rows(images.shape[1], features.shape[1])] = True
  stripe, rest = features[:, on_stripe].reshape(-1, 16), features[:, ~on_stripe].reshape(-1, 16)
  difference = stripe.mean(0) - rest.mean(0)
  # Fisher's discriminant: the direction that best separates the two sets of cells.
  scatter = np.cov(stripe.T) + np.cov(rest.T)
  direction = np.linalg.solve(scatter + 1e-6 * np.trace(scatter) * np.eye(16), difference)
  gap = direction @ difference
  attention = model.head.attention
  key = np.zeros(attention.key.kernel.shape)
  key[..., 0] = direction * ENERGY_GAP / gap
  query_bias = np.zeros(attention.query.bias.shape)
  query_bias[0] = 1.0
  attention.key.kernel.value = jnp.asarray(key, jnp.float32)
  attention.key.bias.value = jnp.zeros_like(attention.key.bias.value)
  attention.query.kernel.value = jnp.zeros_like(attention.query.kernel.value)
  attention.query.bias.value = jnp.asarray(query_bias, jnp.float32)
  model_dir.save_model(directory, model, config, preprocessing=IMAGENET)
  return model


@contextlib.contextmanager
def _locked(path):
  with open(path, "w") as handle:
    fcntl.flock(handle, fcntl.LOCK_EX)
    yield


def shared_stripe_reader(tmp_path_factory, worker_id):
  """The directory of one stripe reader for the whole test run, built by the first test process
  that asks for it (pytest-xdist's workers share the parent of their temporary directories)."""
  if worker_id == "master":  # One process: its own temporary directory.
    directory = tmp_path_factory.mktemp("explore") / "stripe_reader"
    save_stripe_reader(directory)
    return str(directory)
  root = tmp_path_factory.getbasetemp().parent
  directory = root / "explore_stripe_reader"
  with _locked(root / "explore_stripe_reader.lock"):
    if not (directory / "model.json").exists():
      save_stripe_reader(directory)
  return str(directory)
