"""load_model: a model directory, a run's checkpoints and a workdir give the saved network."""

import logging
import os

import jax.numpy as jnp
import numpy as np
import optax
import pytest
from absl import logging as absl_logging
from flax import nnx

from ccnet_jax.loading import load_model
from ccnet_jax.models import model_dir
from ccnet_jax.training.checkpointing import RunCheckpoints
from ccnet_jax.training.state import create_train_state
from ccnet_jax.training.workdir import write_config
from tests.helpers import PREPROCESSING, flat_arrays, randomised, tiny_model_config, tiny_run_config


@pytest.fixture(scope="module")
def models():
  """Three different random models of one architecture."""
  config = tiny_model_config(num_classes=6)
  return config, [randomised(config, seed) for seed in (1, 2, 3)]


def assert_same_arrays(got, want):
  got, want = flat_arrays(got), flat_arrays(want)
  assert sorted(got) == sorted(want)
  for name, value in want.items():
    np.testing.assert_array_equal(got[name], value, err_msg=name)


def save_checkpoint(workdir, model, step):
  """A run's workdir whose only model is the checkpoint of ``step`` holding ``model``."""
  config = tiny_run_config()
  config.model = tiny_model_config(num_classes=6)
  config.data.update(channel_order="bgr", mean=PREPROCESSING.mean, std=PREPROCESSING.std)
  os.makedirs(workdir, exist_ok=True)
  write_config(str(workdir), config)
  _, state = create_train_state(model, optax.sgd(0.1), seed=0)
  checkpoints = RunCheckpoints(os.path.join(workdir, "checkpoints"), keep=2)
  checkpoints.save(step, state, {"position": step})
  checkpoints.close()


def test_a_model_directory_gives_its_arrays_config_and_preprocessing(saved_model):
  loaded = load_model(saved_model.directory)
  assert_same_arrays(loaded.model, saved_model.model)
  assert loaded.config.to_dict() == saved_model.config.to_dict() and loaded.num_classes == 6
  assert loaded.preprocessing == saved_model.preprocessing
  assert loaded.source == f"model directory {saved_model.directory}"
  norms = [m for _, m in nnx.iter_graph(loaded.model) if isinstance(m, nnx.BatchNorm)]
  assert norms and all(norm.use_running_average for norm in norms)  # Eval mode.


def test_dtype_and_attention_are_replaced_but_parameters_stay_float32(saved_model):
  model = saved_model.model
  loaded = load_model(saved_model.directory, dtype="bfloat16", cca_impl="einsum_recompute")
  assert loaded.config.dtype == "bfloat16" and loaded.model.dtype == jnp.bfloat16
  assert loaded.config.cca_impl == "einsum_recompute"
  kernel = loaded.model.head.classifier.kernel
  assert kernel.dtype == jnp.float32
  np.testing.assert_array_equal(np.asarray(kernel), np.asarray(model.head.classifier.kernel))


def test_a_workdir_gives_model_then_best_then_its_newest_checkpoint(models, tmp_path):
  config, (first, second, third) = models
  save_checkpoint(tmp_path, first, step=3)
  for path in (tmp_path, tmp_path / "checkpoints"):
    loaded = load_model(path)
    assert_same_arrays(loaded.model, first)
    assert loaded.source == f"checkpoint of step 3 in {tmp_path / 'checkpoints'}"
    assert loaded.preprocessing == PREPROCESSING
    assert loaded.config.to_dict() == config.to_dict()
  model_dir.save_model(tmp_path / "best", second, config, preprocessing=None)
  assert_same_arrays(load_model(tmp_path).model, second)
  model_dir.save_model(tmp_path / "model", third, config, preprocessing=None)
  assert_same_arrays(load_model(tmp_path).model, third)


def test_what_is_not_a_model_is_named(models, tmp_path):
  config, (model, *_) = models
  with pytest.raises(FileNotFoundError, match="missing: no such directory"):
    load_model(tmp_path / "missing")
  (tmp_path / "empty").mkdir()
  with pytest.raises(FileNotFoundError, match="empty is not a model directory .* workdir"):
    load_model(tmp_path / "empty")
  model_dir.save_model(tmp_path / "bb", model.backbone, config, preprocessing=None)
  with pytest.raises(ValueError, match="only a backbone"):
    load_model(tmp_path / "bb")
  save_checkpoint(tmp_path / "run", model, step=1)
  os.remove(tmp_path / "run" / "config.json")
  with pytest.raises(FileNotFoundError, match="config.json not found"):
    load_model(tmp_path / "run")


def test_loading_logs_no_warning(models, tmp_path, caplog):
  """orbax warned (two lines, 'Sharding info') on a restore that names no sharding."""
  config, (model, *_) = models
  save_checkpoint(tmp_path / "run", model, step=1)
  model_dir.save_model(tmp_path / "model", model, config, preprocessing=None)
  with caplog.at_level(logging.WARNING):
    absl_logging.warning("what this test would see")
    load_model(tmp_path / "run" / "checkpoints")
    load_model(tmp_path / "model")
  assert [r.getMessage() for r in caplog.records] == ["what this test would see"]
