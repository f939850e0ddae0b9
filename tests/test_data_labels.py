"""Label tables and palettes against cityscapesscripts and the ADE20K conventions."""

from __future__ import annotations

import numpy as np
import pytest
from cityscapesscripts.helpers import labels as cs_labels

from ccnet_jax.data import labels


def test_cityscapes_id_to_train_id_matches_cityscapesscripts():
  table = labels.CITYSCAPES_ID_TO_TRAIN_ID
  assert table.shape == (256,) and table.dtype == np.uint8
  for label in cs_labels.labels:
    if label.id < 0:
      continue
    expected = 255 if label.trainId in (-1, 255) else label.trainId
    assert table[label.id] == expected, label.name
  assert np.all(table[34:] == 255)


def test_cityscapes_names_and_palette_in_train_id_order():
  info = labels.dataset_info("cityscapes")
  train = sorted((l.trainId, l.name, l.color) for l in cs_labels.labels if 0 <= l.trainId < 255)
  assert info.num_classes == 19
  assert info.class_names == tuple(name for _, name, _ in train)
  np.testing.assert_array_equal(info.palette, np.array([c for _, _, c in train], np.uint8))
  assert info.ignore_label == 255


def test_ade20k_tables():
  info = labels.dataset_info("ade20k")
  assert info.num_classes == 150 and len(set(info.class_names)) == 150
  assert info.palette.shape == (150, 3) and info.palette.dtype == np.uint8
  assert info.class_names[0] == "wall" and info.class_names[-1] == "flag"
  table = labels.ADE20K_ID_TO_TRAIN_ID
  assert table[0] == 255
  for k in (1, 2, 77, 150):
    assert table[k] == k - 1
  assert np.all(table[151:] == 255)


def test_synthetic_info_and_unknown_name():
  info = labels.dataset_info("synthetic")
  assert info.num_classes == 6 and info.palette.shape == (6, 3)
  with pytest.raises(ValueError, match="data.name"):
    labels.dataset_info("kitti")


def test_dataset_from_the_class_count_or_named():
  assert labels.dataset_for_model(19).name == "cityscapes"
  assert labels.dataset_for_model(150).name == "ade20k"
  assert labels.dataset_for_model(6).name == "synthetic"
  with pytest.raises(ValueError, match="pass --dataset"):
    labels.dataset_for_model(7)
  with pytest.raises(ValueError, match="--dataset=ade20k has 150 classes"):
    labels.dataset_for_model(19, "ade20k")


def test_cityscapes_label_ids_follow_the_official_table():
  table = labels.train_id_to_label_id("cityscapes")
  for train_id in range(19):
    assert table[train_id] == cs_labels.trainId2label[train_id].id
  ade = labels.train_id_to_label_id("ade20k")
  np.testing.assert_array_equal(ade[:150], np.arange(1, 151))
