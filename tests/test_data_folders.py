"""Cityscapes and ADE20K folder sources on tiny fake datasets in the official layouts."""

from __future__ import annotations

import os

import numpy as np
import pytest
from cityscapesscripts.helpers.labels import id2label
from PIL import Image

from ccnet_jax.data.config import data_config
from ccnet_jax.data.folders import ADE20KFolders, CityscapesFolders, read_image, read_label
from ccnet_jax.data.pipeline import make_eval_loader
from ccnet_jax.data.sources import build_source


def _save(path, array):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  options = {"quality": 100, "subsampling": 0} if path.endswith(".jpg") else {}
  Image.fromarray(array).save(path, **options)


def _cityscapes_tree(root, split="val", sizes=((8, 16), (8, 16), (6, 10))):
  """Images and labelIds PNGs; the second image of 'aachen' ships labelTrainIds instead."""
  rng = np.random.default_rng(0)
  expected = {}
  for n, (h, w) in enumerate(sizes):
    city = "aachen" if n < 2 else "bonn"
    stem = f"{city}_{n:06d}_000019"
    image = rng.integers(0, 256, (h, w, 3)).astype(np.uint8)
    ids = rng.integers(0, 34, (h, w)).astype(np.uint8)
    train_ids = np.array([[id2label[int(i)].trainId for i in row] for row in ids])
    train_ids = np.where((train_ids < 0) | (train_ids == 255), 255, train_ids).astype(np.uint8)
    _save(f"{root}/leftImg8bit/{split}/{city}/{stem}_leftImg8bit.png", image)
    if n == 1:
      _save(f"{root}/gtFine/{split}/{city}/{stem}_gtFine_labelTrainIds.png", train_ids)
    else:
      _save(f"{root}/gtFine/{split}/{city}/{stem}_gtFine_labelIds.png", ids)
    expected[stem] = (image, train_ids)
  return expected


def test_cityscapes_folders_pixel_for_pixel(tmp_path):
  expected = _cityscapes_tree(tmp_path)
  source = CityscapesFolders(tmp_path, "val")
  assert len(source) == 3
  for i in range(len(source)):
    example = source[i]
    image, train_ids = expected[example["name"]]
    assert example["image"].dtype == np.uint8 and example["label"].dtype == np.uint8
    np.testing.assert_array_equal(example["image"], image)
    np.testing.assert_array_equal(example["label"], train_ids)
  assert 255 in np.concatenate([source[i]["label"].ravel() for i in range(3)])


def test_cityscapes_through_config_and_eval_loader(tmp_path):
  expected = _cityscapes_tree(tmp_path)
  config = data_config("cityscapes")
  config.root = str(tmp_path)
  assert isinstance(build_source(config, "val"), CityscapesFolders)
  batches = list(make_eval_loader(config, batch_size=1, process_index=0, process_count=1))
  assert [b["name"][0] for b in batches] == sorted(expected)
  np.testing.assert_array_equal(batches[0]["label"][0], expected[batches[0]["name"][0]][1])
  with pytest.raises(ValueError, match="one size"):
    list(make_eval_loader(config, batch_size=3, process_index=0, process_count=1))


def test_cityscapes_missing_root_says_what_and_where(tmp_path):
  with pytest.raises(FileNotFoundError) as error:
    CityscapesFolders(tmp_path / "nowhere", "train")
  message = str(error.value)
  assert "leftImg8bit" in message and "gtFine" in message
  assert "cityscapes-dataset.com" in message and "configs/synthetic.py" in message
  assert "\n" not in message


def test_cityscapes_bad_files(tmp_path):
  _cityscapes_tree(tmp_path)
  source = CityscapesFolders(tmp_path, "val")
  image_path, label_path = source.image_paths[0], source.label_paths[0]

  with open(image_path, "wb") as f:
    f.write(b"\x89PNG\r\n\x1a\nnot really a png")
  with pytest.raises(ValueError, match=image_path):
    source[0]

  _save(source.image_paths[2], np.zeros((7, 10, 3), np.uint8))
  with pytest.raises(ValueError) as error:
    source[2]
  assert source.image_paths[2] in str(error.value) and source.label_paths[2] in str(error.value)

  _save(image_path, np.zeros((8, 16, 3), np.uint8))
  ids = np.full((8, 16), 7, np.uint8)
  ids[0, :2] = (40, 200)
  _save(label_path, ids)
  with pytest.raises(ValueError, match=r"\[40, 200\]") as error:
    source[0]
  assert label_path in str(error.value)


def _ade_tree(root, split="training", count=3):
  rng = np.random.default_rng(1)
  expected = {}
  for n in range(count):
    stem = f"ADE_{split[:5]}_{n:08d}"
    image = rng.integers(0, 256, (9, 12, 3)).astype(np.uint8)
    ids = rng.integers(0, 151, (9, 12)).astype(np.uint8)
    ids[0, 0], ids[0, 1] = 0, 150
    _save(f"{root}/ADEChallengeData2016/images/{split}/{stem}.jpg", image)
    _save(f"{root}/ADEChallengeData2016/annotations/{split}/{stem}.png", ids)
    expected[stem] = (image, np.where(ids == 0, 255, ids.astype(np.int64) - 1).astype(np.uint8))
  return expected


def test_ade20k_folders_pixel_for_pixel(tmp_path):
  expected = _ade_tree(tmp_path)
  for root in (tmp_path, tmp_path / "ADEChallengeData2016"):
    source = ADE20KFolders(root, "training")
    assert len(source) == 3
    for i in range(3):
      example = source[i]
      image, label = expected[example["name"]]
      np.testing.assert_array_equal(example["label"], label)
      assert example["label"][0, 0] == 255 and example["label"][0, 1] == 149
      # JPEG is lossy: the decoded image is close to what was written.
      assert np.abs(example["image"].astype(int) - image).mean() < 3
      assert example["image"].shape == image.shape


def test_ade20k_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match="ADEChallengeData2016.zip") as error:
    ADE20KFolders(tmp_path, "validation")
  assert "configs/synthetic.py" in str(error.value)
  _ade_tree(tmp_path, "validation", 1)
  source = ADE20KFolders(tmp_path, "validation")
  ids = np.zeros((9, 12), np.uint8)
  ids[3, 3] = 151
  _save(source.label_paths[0], ids)
  with pytest.raises(ValueError, match=r"\[151\]"):
    source[0]


def _pil_rgb(path):
  with Image.open(path) as image:
    return np.asarray(image.convert("RGB"))


def _encoded(tmp_path):
  """(path, PIL image) of a photo-like picture in the PNG and JPEG modes the decoders see."""
  rng = np.random.default_rng(2)
  smooth = np.cumsum(rng.integers(-8, 9, (24, 40, 3)), axis=1) + 128
  rgb = Image.fromarray(np.clip(smooth, 0, 255).astype(np.uint8))
  images = {
      "rgb.png": rgb,
      "grey.png": rgb.convert("L"),
      "rgba.png": rgb.convert("RGBA"),
      "palette.png": rgb.quantize(32),
      "deep.png": Image.fromarray(np.asarray(rgb)[..., 0].astype(np.uint16) * 257),
      "grey.jpg": rgb.convert("L"),
      "cmyk.jpg": rgb.convert("CMYK"),
  }
  options = {f"{s}{p}.jpg": dict(subsampling=s, progressive=p) for s in (0, 1, 2) for p in (0, 1)}
  images.update({name: rgb for name in options})
  paths = {}
  for name, image in images.items():
    paths[name] = str(tmp_path / name)
    image.save(paths[name], quality=90, **options.get(name, {}))
  return paths


def test_decoders_give_pils_pixels(tmp_path):
  """libspng (8-bit RGB PNG) and libjpeg-turbo through OpenCV (RGB and grey JPEG, any chroma
  subsampling, progressive) decode to PIL's pixels; other modes go through PIL itself, but for
  16-bit grey, which PIL clips to white and which is read by its high byte (as PIL reads 16-bit
  RGB)."""
  for name, path in _encoded(tmp_path).items():
    got = read_image(path)
    assert got.dtype == np.uint8 and got.shape == (24, 40, 3), name
    if name == "deep.png":
      with Image.open(path) as image:
        want = np.repeat(
            (np.asarray(image).astype(np.uint32) >> 8).astype(np.uint8)[..., None], 3, -1
        )
    else:
      want = _pil_rgb(path)
    np.testing.assert_array_equal(got, want, err_msg=name)


def test_decoders_refuse_what_pil_refuses(tmp_path):
  path = _encoded(tmp_path)["00.jpg"]
  with open(path, "rb") as f:
    data = f.read()
  truncated = str(tmp_path / "truncated.jpg")
  with open(truncated, "wb") as f:
    f.write(data[: len(data) // 2])
  with pytest.raises(ValueError, match="truncated.jpg"):
    read_image(truncated)
  png = _encoded(tmp_path)["rgb.png"]
  with open(png, "rb") as f:
    data = f.read()
  with open(png, "wb") as f:
    f.write(data[:-40])
  with pytest.raises(ValueError, match="rgb.png"):
    read_image(png)


def test_label_decoders_keep_ids_and_palette_indices(tmp_path):
  ids = np.random.default_rng(3).integers(0, 40, (9, 13)).astype(np.uint8)
  grey, palette = str(tmp_path / "grey.png"), str(tmp_path / "palette.png")
  Image.fromarray(ids).save(grey)
  indexed = Image.fromarray(ids, mode="P")
  indexed.putpalette(np.random.default_rng(4).integers(0, 256, 768).astype(np.uint8).tobytes())
  indexed.save(palette)
  for path in (grey, palette):
    np.testing.assert_array_equal(read_label(path), ids)
  Image.fromarray(np.zeros((9, 13, 3), np.uint8)).save(grey)
  with pytest.raises(ValueError, match="mode 'RGB'"):
    read_label(grey)
