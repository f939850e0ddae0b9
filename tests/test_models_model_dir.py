"""save_model / read_info / load_state_into: the round trip keeps every array and the outputs."""

import json
import os

import jax
import numpy as np
import pytest
from flax import nnx

from ccnet_jax.models import model_dir
from ccnet_jax.models.preprocessing import IMAGENET
from ccnet_jax.models.registry import construct_model
from tests.helpers import flat_arrays, randomised, tiny_model_config


@nnx.jit
def forward(model, images):
  return model(images)


def test_round_trip_restores_every_array_config_and_preprocessing(saved_model):
  _, directory, config, model, preprocessing = saved_model
  assert sorted(os.listdir(directory)) == ["model.json", "params"]
  info = model_dir.read_info(directory)
  loaded = model_dir.empty_module(lambda: construct_model(info.config))
  model_dir.load_state_into(loaded, directory)
  loaded.eval()
  original, restored = flat_arrays(model), flat_arrays(loaded)
  assert sorted(original) == sorted(restored)
  for name in original:
    np.testing.assert_array_equal(restored[name], original[name], err_msg=name)
  assert info.config.to_dict() == config.to_dict() and info.part == "all"
  assert info.preprocessing == preprocessing
  x = np.random.default_rng(0).normal(size=(1, 33, 41, 3)).astype(np.float32)
  assert all(isinstance(leaf, jax.Array) for leaf in jax.tree.leaves(nnx.state(loaded)))
  # The same arrays through the same compiled program: the same outputs, bit for bit.
  for want, got in zip(forward(model, x), forward(loaded, x)):
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def test_load_state_into_backbone_keeps_the_heads(saved_model):
  _, directory, config, model, _ = saved_model
  target = randomised(config, seed=2)
  heads_before = flat_arrays(target.head)
  model_dir.load_state_into(target, directory, part="backbone")
  for name, value in flat_arrays(model.backbone).items():
    np.testing.assert_array_equal(flat_arrays(target.backbone)[name], value, err_msg=name)
  for name, value in flat_arrays(target.head).items():
    np.testing.assert_array_equal(value, heads_before[name], err_msg=name)


def test_backbone_only_export_initialises_a_ccnet_but_is_not_a_model(tmp_path):
  config = tiny_model_config(num_classes=3)
  backbone = randomised(config, seed=3).backbone
  model_dir.save_model(tmp_path / "bb", backbone, config, preprocessing=None)
  target = model_dir.empty_module(lambda: construct_model(tiny_model_config(num_classes=7)))
  info = model_dir.load_state_into(target, tmp_path / "bb", part="backbone")
  assert info.part == "backbone" and info.preprocessing == IMAGENET
  for name, value in flat_arrays(backbone).items():
    np.testing.assert_array_equal(flat_arrays(target.backbone)[name], value, err_msg=name)
  with pytest.raises(ValueError, match="only a backbone"):
    model_dir.load_state_into(target, tmp_path / "bb", part="all")


def test_shape_and_name_mismatches_are_listed(saved_model):
  directory = saved_model.directory
  other_classes = model_dir.empty_module(lambda: construct_model(tiny_model_config(num_classes=7)))
  with pytest.raises(ValueError, match=r"head/classifier/kernel: \(1, 1, 16, 6\) vs model"):
    model_dir.load_state_into(other_classes, directory)
  deeper = model_dir.empty_module(lambda: construct_model(tiny_model_config(depth=34)))
  with pytest.raises(ValueError, match=r"missing \['backbone/layer1/2/bn1/bias'"):
    model_dir.load_state_into(deeper, directory, part="backbone")


def test_overwrite_replaces_and_bad_inputs_fail_clearly(saved_model, tmp_path):
  _, _, config, model, _ = saved_model
  directory = tmp_path / "m"
  model_dir.save_model(directory, model, config, preprocessing=None)
  config2 = tiny_model_config(num_classes=4)
  model_dir.save_model(directory, randomised(config2, seed=4), config2, preprocessing=None)
  assert sorted(os.listdir(tmp_path)) == ["m"]
  with open(directory / "model.json") as f:
    assert json.load(f)["model"]["num_classes"] == 4
  assert model_dir.read_info(directory).config.num_classes == 4
  with pytest.raises(FileNotFoundError, match="model.json"):
    model_dir.read_info(tmp_path / "nothing")
  with pytest.raises(ValueError, match="part="):
    model_dir.load_state_into(model, directory, part="heads")
