"""PASCAL VOC 2012 with the SBD augmented annotations, in the folder layout mmsegmentation uses.

  VOCdevkit/VOC2012/JPEGImages/<id>.jpg
  VOCdevkit/VOC2012/SegmentationClassAug/<id>.png     (SBD + VOC, 12031 single-channel PNGs)
  VOCdevkit/VOC2012/SegmentationClass/<id>.png        (VOC's own 2913, palette PNGs)
  VOCdevkit/VOC2012/ImageSets/Segmentation/{train_aug,val}.txt

A split is the list of ids in ``ImageSets/Segmentation/<split>.txt``; each id's label is read
from SegmentationClassAug, else from SegmentationClass. mmsegmentation's own conversion script
writes ``aug.txt`` (the SBD ids not in val) beside VOC's ``train.txt`` instead of one
``train_aug.txt``: the 'train_aug' split is then their union. Label values are the class
index 0..20 and 255 (object boundaries, ignored).

TensorFlow Datasets has no source for this: its ``voc/2012`` builder holds boxes and
image-level labels but no segmentation masks, and SBD is not in its catalogue.
"""

from __future__ import annotations

import os

import numpy as np

from ccnet_jax.data import labels
from ccnet_jax.data.folders import ImageLabelFolders, map_label

VOC_HELP = (
    "download VOCtrainval_11-May-2012.tar (host.robots.ox.ac.uk/pascal/VOC/voc2012) and the SBD "
    "annotations, convert them to VOCdevkit/VOC2012/SegmentationClassAug with "
    "ImageSets/Segmentation/train_aug.txt (mmsegmentation's tools/dataset_converters/voc_aug.py "
    "does both), and set data.root to the folder holding VOCdevkit; or train on "
    "configs/synthetic.py, which needs no download"
)
LABEL_DIRS = ("SegmentationClassAug", "SegmentationClass")
_IDENTITY = np.arange(256, dtype=np.uint8)


def voc2012_dir(root: str) -> str:
  """VOCdevkit/VOC2012 under ``root``, which may be it, VOCdevkit or the folder holding that."""
  for candidate in (os.path.join(root, "VOCdevkit", "VOC2012"), os.path.join(root, "VOC2012")):
    if os.path.isdir(candidate):
      return candidate
  return root


def _read_ids(path: str) -> list[str]:
  with open(path, encoding="utf-8") as f:
    return [line.split()[0] for line in f if line.strip()]


def split_ids(voc_dir: str, split: str) -> list[str]:
  """The image ids of ``split``, in file order (train_aug may be train.txt + aug.txt)."""
  sets = os.path.join(voc_dir, "ImageSets", "Segmentation")
  path = os.path.join(sets, f"{split}.txt")
  if os.path.isfile(path):
    return _read_ids(path)
  parts = [os.path.join(sets, name) for name in ("train.txt", "aug.txt")]
  if split == "train_aug" and all(os.path.isfile(p) for p in parts):
    ids = _read_ids(parts[0])
    seen = set(ids)
    return ids + [i for i in _read_ids(parts[1]) if i not in seen]
  raise FileNotFoundError(f"PASCAL VOC split {split!r} not found: expected {path}; {VOC_HELP}.")


class VOCFolders(ImageLabelFolders):
  """The images and class-index labels of one split of VOC 2012 (+ SBD)."""

  def __init__(self, root: str, split: str):
    self.root, self.split = voc2012_dir(str(root)), split
    ids = split_ids(self.root, split)
    self.image_paths, self.label_paths = [], []
    for image_id in ids:
      image_path = os.path.join(self.root, "JPEGImages", f"{image_id}.jpg")
      label_path = self._label_path(image_id)
      if not os.path.exists(image_path):
        raise FileNotFoundError(
            f"{split}.txt names {image_id!r} but {image_path} does not " f"exist; {VOC_HELP}."
        )
      self.image_paths.append(image_path)
      self.label_paths.append(label_path)
    if not ids:
      raise FileNotFoundError(f"PASCAL VOC split {split!r} under {self.root} lists no images.")

  def _label_path(self, image_id: str) -> str:
    candidates = [os.path.join(self.root, d, f"{image_id}.png") for d in LABEL_DIRS]
    for path in candidates:
      if os.path.exists(path):
        return path
    raise FileNotFoundError(
        f"no label for {image_id!r} in {self.split}.txt: expected "
        f"{' or '.join(candidates)}; {VOC_HELP}."
    )

  def train_ids(self, label: np.ndarray, path: str) -> np.ndarray:
    return map_label(
        label, _IDENTITY, labels.VOC.num_classes, path, extra_valid=(labels.IGNORE_LABEL,)
    )
