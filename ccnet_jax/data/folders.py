"""Cityscapes and ADE20K read from their official folder layouts (the unzipped archives)."""

from __future__ import annotations

import glob
import io
import os

import cv2
import numpy as np
from PIL import Image

from ccnet_jax.data import labels
from ccnet_jax.data.images import png_layout, read_image

CITYSCAPES_HELP = (
    "download leftImg8bit_trainvaltest.zip and gtFine_trainvaltest.zip from "
    "https://www.cityscapes-dataset.com and unzip both into data.root, or train on "
    "configs/synthetic.py, which needs no download"
)
ADE20K_HELP = (
    "download ADEChallengeData2016.zip from the MIT Scene Parsing benchmark "
    "(http://sceneparsing.csail.mit.edu) and set data.root to the unzipped "
    "ADEChallengeData2016 folder, or train on configs/synthetic.py, which needs no download"
)


def read_label(path: str) -> np.ndarray:
  """The single-channel label map of a PNG as uint8 (H, W) (palette indices, not colours).

  8-bit grey PNGs are decoded by OpenCV (faster than PIL and libspng on label maps), palette
  PNGs by PIL (OpenCV would expand the colours).
  """
  try:
    with open(path, "rb") as f:
      data = f.read()
    if png_layout(data) == (8, 0):
      decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE)
      if decoded is not None:
        return decoded
    with Image.open(io.BytesIO(data)) as image:
      if image.mode not in ("L", "P"):
        raise ValueError(
            f"label {path} has mode {image.mode!r}; expected an 8-bit " "single-channel PNG of ids"
        )
      return np.asarray(image)
  except (OSError, SyntaxError, RuntimeError) as error:
    raise ValueError(f"cannot decode label {path}: {error}") from None


def map_label(
    label: np.ndarray, table: np.ndarray, num_ids: int, path: str, extra_valid: tuple[int, ...] = ()
) -> np.ndarray:
  """Maps ids through ``table`` (one table lookup) after checking they are all in [0, num_ids)
  or ``extra_valid``."""
  valid = np.zeros(256, np.uint8)
  valid[:num_ids] = 1
  valid[list(extra_valid)] = 1
  if label.max(initial=0) >= num_ids and not cv2.LUT(label, valid).all():
    values = np.unique(label)
    bad = values[(values >= num_ids) & ~np.isin(values, extra_valid)]
    raise ValueError(
        f"label {path} holds ids {bad.tolist()} outside the valid ids "
        f"0..{num_ids - 1}{' and ' + str(list(extra_valid)) if extra_valid else ''}"
    )
  return cv2.LUT(label, table)


def load_pair(image_path: str, label_path: str) -> tuple[np.ndarray, np.ndarray]:
  image, label = read_image(image_path), read_label(label_path)
  if image.shape[:2] != label.shape:
    raise ValueError(
        f"image {image_path} is {image.shape[0]}x{image.shape[1]} but label "
        f"{label_path} is {label.shape[0]}x{label.shape[1]}"
    )
  return image, label


class ImageLabelFolders:
  """A dataset of image files and their label files, in the order of ``image_paths``.

  A subclass fills ``root``, ``split``, ``image_paths`` and ``label_paths`` and says how a
  label file's ids become train ids (:meth:`train_ids`) and how an image is named.
  """

  root: str
  split: str
  image_paths: list[str]
  label_paths: list[str]

  def __len__(self) -> int:
    return len(self.image_paths)

  def __repr__(self) -> str:
    return f"{type(self).__name__}(root={self.root!r}, split={self.split!r})"

  def __getitem__(self, index: int) -> dict:
    image_path, label_path = self.image_paths[index], self.label_paths[index]
    image, label = load_pair(image_path, label_path)
    return {
        "image": image,
        "label": self.train_ids(label, label_path),
        "name": self.name(image_path),
    }

  def train_ids(self, label: np.ndarray, path: str) -> np.ndarray:
    raise NotImplementedError

  def name(self, image_path: str) -> str:
    return os.path.splitext(os.path.basename(image_path))[0]


class CityscapesFolders(ImageLabelFolders):
  """leftImg8bit/{split}/{city}/*_leftImg8bit.png with gtFine/{split}/{city}/ labels.

  Uses *_gtFine_labelTrainIds.png (from cityscapesscripts' createTrainIdLabelImgs) where
  present, else maps *_gtFine_labelIds.png through the official id -> train id table.
  """

  def __init__(self, root: str, split: str):
    self.root, self.split = str(root), split
    image_dir = os.path.join(self.root, "leftImg8bit", split)
    label_dir = os.path.join(self.root, "gtFine", split)
    self.image_paths = sorted(glob.glob(os.path.join(image_dir, "*", "*_leftImg8bit.png")))
    if not os.path.isdir(label_dir) or not self.image_paths:
      raise FileNotFoundError(
          f"Cityscapes {split!r} not found under data.root={self.root!r}: expected "
          f"{image_dir}/<city>/*_leftImg8bit.png and {label_dir}/<city>/*_gtFine_labelIds.png; "
          f"{CITYSCAPES_HELP}."
      )
    self.label_paths = []
    for image_path in self.image_paths:
      city = os.path.basename(os.path.dirname(image_path))
      stem = os.path.basename(image_path)[: -len("_leftImg8bit.png")]
      train_ids = os.path.join(label_dir, city, f"{stem}_gtFine_labelTrainIds.png")
      label_ids = os.path.join(label_dir, city, f"{stem}_gtFine_labelIds.png")
      if os.path.exists(train_ids):
        self.label_paths.append(train_ids)
      elif os.path.exists(label_ids):
        self.label_paths.append(label_ids)
      else:
        raise FileNotFoundError(
            f"no label for {image_path}: expected {label_ids} (or "
            f"{os.path.basename(train_ids)}); {CITYSCAPES_HELP}."
        )

  def train_ids(self, label: np.ndarray, path: str) -> np.ndarray:
    if path.endswith("_labelTrainIds.png"):
      return map_label(
          label,
          np.arange(256, dtype=np.uint8),
          labels.CITYSCAPES.num_classes,
          path,
          extra_valid=(labels.IGNORE_LABEL,),
      )
    return map_label(label, labels.CITYSCAPES_ID_TO_TRAIN_ID, labels.CITYSCAPES_NUM_LABEL_IDS, path)

  def name(self, image_path: str) -> str:
    return os.path.basename(image_path)[: -len("_leftImg8bit.png")]


class ADE20KFolders(ImageLabelFolders):
  """ADEChallengeData2016/images/{split}/*.jpg with annotations/{split}/*.png (0 = other)."""

  def __init__(self, root: str, split: str):
    root = str(root)
    if os.path.isdir(os.path.join(root, "ADEChallengeData2016")):
      root = os.path.join(root, "ADEChallengeData2016")
    self.root, self.split = root, split
    image_dir = os.path.join(root, "images", split)
    label_dir = os.path.join(root, "annotations", split)
    self.image_paths = sorted(glob.glob(os.path.join(image_dir, "*.jpg")))
    if not os.path.isdir(label_dir) or not self.image_paths:
      raise FileNotFoundError(
          f"ADE20K {split!r} not found under data.root={root!r}: expected {image_dir}/*.jpg "
          f"and {label_dir}/*.png; {ADE20K_HELP}."
      )
    self.label_paths = []
    for image_path in self.image_paths:
      stem = os.path.splitext(os.path.basename(image_path))[0]
      label_path = os.path.join(label_dir, f"{stem}.png")
      if not os.path.exists(label_path):
        raise FileNotFoundError(
            f"no label for {image_path}: expected {label_path}; " f"{ADE20K_HELP}."
        )
      self.label_paths.append(label_path)

  def train_ids(self, label: np.ndarray, path: str) -> np.ndarray:
    return map_label(label, labels.ADE20K_ID_TO_TRAIN_ID, labels.ADE20K_NUM_LABEL_IDS, path)
