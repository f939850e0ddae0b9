"""save_model / load_model / load_state_into: the round trip keeps every array and the outputs."""

import json
import os

import jax
import numpy as np
import pytest
from flax import nnx

from ccnet_jax.models import model_dir
from ccnet_jax.models.registry import build_model, model_config


def tiny_config(depth=18, num_classes=5, dtype="float32"):
  config = model_config("ccnet_r101_official", num_classes=num_classes, dtype=dtype)
  config.backbone.update(depth=depth, base_width=8)
  config.head.update(channels=16, out_channels=16)
  config.aux.channels = 16
  return config


def randomised(config, seed):
  """A model whose every array (gamma and BatchNorm statistics included) is random."""
  model = model_dir.empty_module(lambda: build_model(config, seed=seed))
  state = nnx.state(model, (nnx.Param, nnx.BatchStat))
  leaves, treedef = jax.tree.flatten(state.to_pure_dict())
  rng = np.random.default_rng(seed)
  leaves = [
      (rng.uniform(0.5, 1.5, x.shape) if x.ndim == 1 else rng.normal(0, 0.2, x.shape)).astype(
          np.float32
      )
      for x in leaves
  ]
  state.replace_by_pure_dict(jax.tree.unflatten(treedef, leaves))
  nnx.update(model, state)
  model.eval()
  return model


@nnx.jit
def forward(model, images):
  return model(images)


def flat_arrays(module):
  return {k: np.asarray(v) for k, v in model_dir.flatten(model_dir.model_arrays(module)).items()}


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
  config = tiny_config()
  model = randomised(config, seed=1)
  directory = tmp_path_factory.mktemp("export") / "model"
  preprocessing = {"channel_order": "BGR", "mean": (104.0, 116.7, 122.7), "std": (1, 1, 1)}
  model_dir.save_model(directory, model, config, preprocessing=preprocessing)
  return config, model, directory


def test_round_trip_restores_every_array_config_and_preprocessing(saved):
  config, model, directory = saved
  assert sorted(os.listdir(directory)) == ["model.json", "params"]
  loaded, info = model_dir.load_model(directory)
  original, restored = flat_arrays(model), flat_arrays(loaded)
  assert sorted(original) == sorted(restored)
  for name in original:
    np.testing.assert_array_equal(restored[name], original[name], err_msg=name)
  assert info["model"].to_dict() == config.to_dict()
  assert info["preprocessing"] == {
      "channel_order": "bgr",
      "mean": (104.0, 116.7, 122.7),
      "std": (1.0, 1.0, 1.0),
  }
  x = np.random.default_rng(0).normal(size=(1, 33, 41, 3)).astype(np.float32)
  assert all(isinstance(leaf, jax.Array) for leaf in jax.tree.leaves(nnx.state(loaded)))
  # The same arrays through the same compiled program: the same outputs, bit for bit.
  for want, got in zip(forward(model, x), forward(loaded, x)):
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def test_load_state_into_backbone_keeps_the_heads(saved):
  config, model, directory = saved
  target = randomised(config, seed=2)
  heads_before = flat_arrays(target.head)
  model_dir.load_state_into(target, directory, part="backbone")
  for name, value in flat_arrays(model.backbone).items():
    np.testing.assert_array_equal(flat_arrays(target.backbone)[name], value, err_msg=name)
  for name, value in flat_arrays(target.head).items():
    np.testing.assert_array_equal(value, heads_before[name], err_msg=name)


def test_backbone_only_export_initialises_a_ccnet_but_is_not_a_model(tmp_path):
  config = tiny_config(num_classes=3)
  backbone = randomised(config, seed=3).backbone
  model_dir.save_model(tmp_path / "bb", backbone, config, preprocessing=None)
  target = model_dir.empty_module(lambda: build_model(tiny_config(num_classes=7)))
  info = model_dir.load_state_into(target, tmp_path / "bb", part="backbone")
  assert info["part"] == "backbone"
  assert info["preprocessing"] == model_dir.IMAGENET_PREPROCESSING
  for name, value in flat_arrays(backbone).items():
    np.testing.assert_array_equal(flat_arrays(target.backbone)[name], value, err_msg=name)
  with pytest.raises(ValueError, match="only a backbone"):
    model_dir.load_model(tmp_path / "bb")
  with pytest.raises(ValueError, match="only a backbone"):
    model_dir.load_state_into(target, tmp_path / "bb", part="all")


def test_shape_and_name_mismatches_are_listed(saved):
  _, _, directory = saved
  other_classes = model_dir.empty_module(lambda: build_model(tiny_config(num_classes=6)))
  with pytest.raises(ValueError, match=r"head/classifier/kernel: \(1, 1, 16, 5\) vs model"):
    model_dir.load_state_into(other_classes, directory)
  deeper = model_dir.empty_module(lambda: build_model(tiny_config(depth=34)))
  with pytest.raises(ValueError, match=r"missing \['backbone/layer1/2/bn1/bias'"):
    model_dir.load_state_into(deeper, directory, part="backbone")


def test_overwrite_replaces_and_bad_inputs_fail_clearly(saved, tmp_path):
  config, model, _ = saved
  directory = tmp_path / "m"
  model_dir.save_model(directory, model, config, preprocessing=None)
  config2 = tiny_config(num_classes=4)
  model_dir.save_model(directory, randomised(config2, seed=4), config2, preprocessing=None)
  assert sorted(os.listdir(tmp_path)) == ["m"]
  with open(directory / "model.json") as f:
    assert json.load(f)["model"]["num_classes"] == 4
  assert model_dir.load_model(directory)[1]["model"].num_classes == 4
  with pytest.raises(FileNotFoundError, match="model.json"):
    model_dir.load_model(tmp_path / "nothing")
  with pytest.raises(ValueError, match="channel_order"):
    model_dir.save_model(
        tmp_path / "x",
        model,
        config,
        preprocessing={"channel_order": "RGBA", "mean": (0, 0, 0), "std": (1, 1, 1)},
    )
  with pytest.raises(ValueError, match="part="):
    model_dir.load_state_into(model, directory, part="heads")
