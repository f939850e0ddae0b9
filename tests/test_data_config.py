"""Dataset presets: the recipe values the papers and toolkits use, and the error for a bad name."""

from __future__ import annotations

import importlib

import pytest

from ccnet_jax.data.config import data_config
from ccnet_jax.data.labels import dataset_info
from ccnet_jax.data.sources import build_source
from ccnet_jax.models.registry import model_config


def test_cityscapes_matches_official_ccnet():
  config = data_config("cityscapes")
  assert config.source == "folders" and config.crop_size == (769, 769)
  assert (config.scale_min, config.scale_max, config.scale_step) == (0.5, 1.6, 0.1)
  assert config.channel_order == "bgr" and config.std == (1.0, 1.0, 1.0)
  assert config.mean == pytest.approx((104.00698793, 116.66876762, 122.67891434))
  assert config.flip


def test_ade20k_matches_mmseg():
  config = data_config("ade20k")
  assert config.crop_size == (512, 512) and (config.scale_min, config.scale_max) == (0.5, 2.0)
  assert config.channel_order == "rgb" and config.mean == pytest.approx((123.675, 116.28, 103.53))
  assert config.std == pytest.approx((58.395, 57.12, 57.375))
  assert (config.train_split, config.eval_split) == ("training", "validation")


@pytest.mark.parametrize("config_file", ["cityscapes", "ade20k", "voc", "synthetic"])
def test_every_recipe_is_a_registry_model_predicting_its_datasets_classes(config_file):
  config = importlib.import_module(f"configs.{config_file}").get_config()
  num_classes = dataset_info(config.data.name).num_classes
  assert (
      config.model.to_dict() == model_config(config.model.name, num_classes=num_classes).to_dict()
  )


def test_synthetic_needs_nothing_on_disk():
  config = data_config("synthetic")
  assert config.source == "synthetic"
  assert len(build_source(config, "train")) == config.synthetic.num_train
  assert len(build_source(config, "val")) == config.synthetic.num_eval


def test_bad_names():
  with pytest.raises(ValueError, match="data.name"):
    data_config("pascal")
  config = data_config("synthetic")
  with pytest.raises(ValueError, match="data.train_split"):
    build_source(config, "extra")
  config.source = "web"
  with pytest.raises(ValueError, match="data.source"):
    build_source(config, "train")
