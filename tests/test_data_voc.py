"""PASCAL VOC 2012 + SBD on a tiny generated dataset in mmsegmentation's folder layout."""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

from ccnet_jax.data.config import data_config
from ccnet_jax.data.labels import dataset_info
from ccnet_jax.data.pipeline import make_eval_loader, make_train_loader
from ccnet_jax.data.sources import build_source
from ccnet_jax.data.voc import VOCFolders
from tests.helpers import voc_tree

# The VOC devkit's colour map (VOClabelcolormap.m), for four of the classes.
_VOC_COLOURS = {0: (0, 0, 0), 1: (128, 0, 0), 15: (192, 128, 128), 20: (0, 64, 128)}


def test_palette_is_the_voc_colour_map():
  palette = dataset_info("voc").palette
  assert palette.shape == (21, 3)
  for index, colour in _VOC_COLOURS.items():
    assert tuple(palette[index]) == colour


@pytest.mark.parametrize("subdir", ["", "VOCdevkit", "VOCdevkit/VOC2012"])
def test_splits_pixel_for_pixel_from_any_root(tmp_path, subdir):
  expected = voc_tree(tmp_path)
  for split, ids in (
      ("val", ["2007_000032", "2010_000038"]),
      ("train_aug", ["2007_000039", "2008_000002", "2009_000012", "2011_000003"]),
  ):
    source = VOCFolders(os.path.join(tmp_path, subdir), split)
    assert [source[i]["name"] for i in range(len(source))] == ids
    for i in range(len(source)):
      example = source[i]
      image, label = expected[example["name"]]
      assert example["label"].dtype == np.uint8
      np.testing.assert_array_equal(example["label"], label)
      assert (example["label"][4] == 255).all()
      # JPEG is lossy: the decoded image is close to what was written.
      assert np.abs(example["image"].astype(int) - image).mean() < 3
  # The palette PNG of a VOC id is read as class indices, not colours.
  assert (
      VOCFolders(tmp_path, "train_aug").label_paths[0].endswith("SegmentationClass/2007_000039.png")
  )


def test_mmseg_train_plus_aug_lists_are_one_split(tmp_path):
  voc_tree(tmp_path, train_aug_file=False)
  source = VOCFolders(tmp_path, "train_aug")
  names = [source[i]["name"] for i in range(len(source))]
  assert names == ["2007_000039", "2008_000002", "2009_000012", "2011_000003"]


def test_config_and_loaders(tmp_path):
  expected = voc_tree(tmp_path, constant_labels=True)
  config = data_config("voc")
  assert (config.train_split, config.eval_split) == ("train_aug", "val")
  assert dataset_info("voc").num_classes == 21 and config.crop_size == (512, 512)
  config.root, config.crop_size = str(tmp_path), (8, 8)
  assert isinstance(build_source(config, "val"), VOCFolders)
  batches = list(make_eval_loader(config, batch_size=1, process_index=0, process_count=1))
  assert [b["name"][0] for b in batches] == ["2007_000032", "2010_000038"]
  np.testing.assert_array_equal(batches[1]["label"][0], expected["2010_000038"][1])
  loader = make_train_loader(config, global_batch_size=4, seed=0, process_index=0, process_count=1)
  batch = next(loader)
  assert batch["image"].shape == (4, 8, 8, 3) and batch["label"].shape == (4, 8, 8)
  # Each crop shows one training image: its class (its index in VOC_IDS), or 255 padding.
  train_classes = {1, 2, 3, 5}
  for label in batch["label"]:
    values = set(np.unique(label).tolist()) - {255}
    assert len(values) == 1 and values <= train_classes


def test_errors_name_the_file_and_the_fix(tmp_path):
  with pytest.raises(FileNotFoundError, match="train_aug.txt") as error:
    VOCFolders(tmp_path, "train_aug")
  assert "SegmentationClassAug" in str(error.value) and "configs/synthetic.py" in str(error.value)
  voc_tree(tmp_path)
  voc = tmp_path / "VOCdevkit" / "VOC2012"
  label = np.zeros((10, 14), np.uint8)
  label[2, 2] = 21
  Image.fromarray(label).save(voc / "SegmentationClassAug" / "2008_000002.png")
  source = VOCFolders(tmp_path, "train_aug")
  with pytest.raises(ValueError, match=r"\[21\]") as error:
    source[1]
  assert "2008_000002.png" in str(error.value)
  os.remove(voc / "JPEGImages" / "2010_000038.jpg")
  with pytest.raises(FileNotFoundError, match="2010_000038"):
    VOCFolders(tmp_path, "val")
  config = data_config("voc")
  config.source = "tfds"
  with pytest.raises(ValueError, match="data.source='folders'"):
    build_source(config, "val")


def test_voc_config_is_mmsegs_ccnet_schedule():
  from configs import voc  # pylint: disable=g-import-not-at-top

  config = voc.get_config()
  assert config.model.name == "ccnet_r101_d8_mmseg" and config.model.backbone.depth == 101
  assert config.model.backbone.output_stride == 8 and config.model.num_classes == 21
  assert (config.train.total_steps, config.train.global_batch_size) == (40_000, 16)
  assert (config.optim.learning_rate, config.optim.momentum, config.optim.power) == (0.01, 0.9, 0.9)
  assert config.optim.weight_decay == 5e-4 and config.loss.aux_weight == 0.4
  assert config.data.crop_size == (512, 512) and config.data.channel_order == "rgb"
  assert config.data.mean == pytest.approx((123.675, 116.28, 103.53))
  assert config.eval.mode == "whole" and not config.eval.align_corners
