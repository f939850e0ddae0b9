"""TFDS sources prepared from tiny fake copies of the official zips, read back pixel for pixel."""

from __future__ import annotations

import io
import zipfile

import numpy as np
import pytest
from cityscapesscripts.helpers.labels import id2label
from PIL import Image

from ccnet_jax.data.config import data_config
from ccnet_jax.data.sources import build_source
from ccnet_jax.data.tfds_sources import TFDSSource


def _encode(array, fmt):
  buffer = io.BytesIO()
  options = {"quality": 100, "subsampling": 0} if fmt == "JPEG" else {}
  Image.fromarray(array).save(buffer, format=fmt, **options)
  return buffer.getvalue()


@pytest.fixture(scope="module")
def cityscapes(tmp_path_factory):
  """The two Cityscapes zips with one 1024x2048 image per split, prepared once."""
  root = tmp_path_factory.mktemp("cityscapes")
  manual = root / "manual"
  manual.mkdir()
  rng = np.random.default_rng(0)
  expected = {}
  with (
      zipfile.ZipFile(manual / "leftImg8bit_trainvaltest.zip", "w") as images,
      zipfile.ZipFile(manual / "gtFine_trainvaltest.zip", "w") as gt,
  ):
    for n, split in enumerate(("train", "val", "test")):
      stem = f"aachen_{n:06d}_000019"
      tiles = rng.integers(0, 256, (16, 32, 3)).astype(np.uint8)
      image = np.kron(tiles, np.ones((64, 64, 1), np.uint8))
      ids = np.kron(rng.integers(0, 34, (16, 32)), np.ones((64, 64), int)).astype(np.uint8)
      images.writestr(f"leftImg8bit/{split}/aachen/{stem}_leftImg8bit.png", _encode(image, "PNG"))
      gt.writestr(f"gtFine/{split}/aachen/{stem}_gtFine_labelIds.png", _encode(ids, "PNG"))
      train_ids = np.vectorize(lambda i: id2label[int(i)].trainId)(ids)
      expected[stem] = (image, np.where((train_ids < 0) | (train_ids == 255), 255, train_ids))
  return root, expected


def test_cityscapes_tfds_pixel_for_pixel(cityscapes):
  root, expected = cityscapes
  for split in ("train", "val"):
    source = TFDSSource(
        "cityscapes", split, data_dir=str(root / "data"), manual_dir=str(root / "manual")
    )
    assert len(source) == 1
    example = source[0]
    image, train_ids = expected[example["name"]]
    assert example["image"].dtype == np.uint8 and example["label"].dtype == np.uint8
    np.testing.assert_array_equal(example["image"], image)
    np.testing.assert_array_equal(example["label"], train_ids)
    assert 255 in example["label"]


def test_cityscapes_tfds_through_config(cityscapes):
  root, expected = cityscapes
  config = data_config("cityscapes")
  config.source, config.tfds_data_dir = "tfds", str(root / "data")
  source = build_source(config, config.eval_split)
  assert isinstance(source, TFDSSource) and source[0]["name"] in expected


def test_cityscapes_tfds_missing_zips(tmp_path):
  with pytest.raises(FileNotFoundError) as error:
    TFDSSource("cityscapes", "train", data_dir=str(tmp_path / "data"), manual_dir=str(tmp_path))
  message = str(error.value)
  assert "leftImg8bit_trainvaltest.zip" in message and "gtFine_trainvaltest.zip" in message
  assert "cityscapes-dataset.com" in message and "configs/synthetic.py" in message


def test_ade20k_tfds_pixel_for_pixel(tmp_path):
  rng = np.random.default_rng(1)
  expected = {}
  with zipfile.ZipFile(tmp_path / "ADEChallengeData2016.zip", "w") as archive:
    for split in ("training", "validation"):
      for n in range(2):
        name = f"ADE_{split}_{n:08d}"
        image = np.kron(rng.integers(0, 256, (3, 4, 3)), np.ones((4, 4, 1), int)).astype(np.uint8)
        ids = rng.integers(0, 151, (12, 16)).astype(np.uint8)
        ids[0, :2] = (0, 150)
        archive.writestr(f"ADEChallengeData2016/images/{split}/{name}.jpg", _encode(image, "JPEG"))
        archive.writestr(
            f"ADEChallengeData2016/annotations/{split}/{name}.png", _encode(ids, "PNG")
        )
        expected[name] = (image, np.where(ids == 0, 255, ids.astype(int) - 1))
  source = TFDSSource(
      "ade20k", "validation", data_dir=str(tmp_path / "data"), manual_dir=str(tmp_path)
  )
  assert len(source) == 2
  for i in range(2):
    example = source[i]
    assert example["name"].startswith("ADE_validation_")
    image, label = expected[example["name"]]
    np.testing.assert_array_equal(example["label"], label)
    assert example["label"][0, 0] == 255 and example["label"][0, 1] == 149
    assert np.abs(example["image"].astype(int) - image).mean() < 3
  with pytest.raises(FileNotFoundError, match="ADEChallengeData2016.zip"):
    TFDSSource(
        "ade20k", "training", data_dir=str(tmp_path / "other"), manual_dir=str(tmp_path / "none")
    )


def test_a_split_without_labels_is_refused_before_anything_is_prepared(tmp_path):
  with pytest.raises(ValueError, match="'test' is not a labelled ADE20K TFDS split"):
    TFDSSource("ade20k", "test", data_dir=str(tmp_path / "data"), manual_dir=str(tmp_path))
  assert not (tmp_path / "data").exists()
