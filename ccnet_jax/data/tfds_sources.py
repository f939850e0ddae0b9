"""Cityscapes and ADE20K through TensorFlow Datasets, read by random access from ArrayRecord.

TFDS cannot download either dataset for us: Cityscapes needs a login, so its builder prepares
from the two official zips placed in ``manual_dir``. The datasets are prepared once in the
``array_record`` file format, which ``builder.as_data_source`` reads by index; that is what the
grain pipeline needs (random access, no TensorFlow graph in the input path).

ADE20K: the TFDS catalogue's ``scene_parse150`` downloads ``ChallengeData2017/images.tar`` and
``annotations_instance.tar`` from sceneparsing.csail.mit.edu and nothing else; it has no manual
directory, and its annotations are the instance-segmentation PNGs of the 2017 challenge rather
than the 150-class semantic maps of ADEChallengeData2016 that CCNet is trained and evaluated on.
So :class:`ADE20KTFDS` uses the builder defined here, ``ade20k_challenge2016``, which prepares
ADEChallengeData2016.zip (the file users of mmsegmentation and the official code already have)
from ``manual_dir`` into ArrayRecord.
"""

from __future__ import annotations

import importlib.util
import os

import numpy as np

from ccnet_jax.data import labels
from ccnet_jax.data.folders import ADE20K_HELP, CITYSCAPES_HELP, map_label

CITYSCAPES_ZIPS = ("leftImg8bit_trainvaltest.zip", "gtFine_trainvaltest.zip")
ADE20K_ZIP = "ADEChallengeData2016.zip"
_SPLITS = {
    "train": "train",
    "training": "train",
    "val": "validation",
    "validation": "validation",
    "test": "test",
}


def _tfds():
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  return tfds


def _tfds_split(split: str, dataset: str) -> str:
  if split not in _SPLITS:
    raise ValueError(
        f"data split {split!r} is not a {dataset} TFDS split; use one of " f"{sorted(_SPLITS)}."
    )
  return _SPLITS[split]


def prepared_builder(
    name: str,
    *,
    data_dir: str | None,
    manual_dir: str | None,
    zips: tuple[str, ...],
    help_text: str,
):
  """The TFDS builder of ``name`` prepared in ArrayRecord, preparing it from ``manual_dir``."""
  tfds = _tfds()
  builder = tfds.builder(name, data_dir=data_dir, file_format="array_record")
  if builder.is_prepared():
    file_format = builder.info.file_format
    file_format = str(getattr(file_format, "value", file_format))
    if file_format not in ("None", "array_record"):
      raise ValueError(
          f"TFDS {name} in {builder.data_dir} was prepared as {file_format}, which has no random "
          f"access; prepare it again with file_format='array_record' (delete that folder and "
          f"set data.manual_dir) or set data.source='folders'."
      )
    return builder
  missing = [z for z in zips if not manual_dir or not os.path.exists(os.path.join(manual_dir, z))]
  if missing:
    raise FileNotFoundError(
        f"TFDS {name} is not prepared in data.tfds_data_dir={data_dir!r} and "
        f"data.manual_dir={manual_dir!r} lacks {', '.join(missing)}; {help_text}; then set "
        f"data.manual_dir to the folder holding {' and '.join(zips)}."
    )
  if importlib.util.find_spec("importlib_resources") is None:
    raise ImportError(
        "preparing a TFDS dataset needs the importlib_resources package (used by "
        "etils); pip install importlib_resources"
    )
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=manual_dir),
      file_format="array_record",
  )
  return builder


class CityscapesTFDS:
  """TFDS ``cityscapes/semantic_segmentation`` (1024x2048 images, gtFine label ids)."""

  def __init__(self, split: str, *, data_dir: str | None = None, manual_dir: str | None = None):
    self.split = _tfds_split(split, "Cityscapes")
    self.data_dir = data_dir
    builder = prepared_builder(
        "cityscapes/semantic_segmentation",
        data_dir=data_dir,
        manual_dir=manual_dir,
        zips=CITYSCAPES_ZIPS,
        help_text=CITYSCAPES_HELP.replace(" and unzip both into data.root", ""),
    )
    self._source = builder.as_data_source(split=self.split)

  def __len__(self) -> int:
    return len(self._source)

  def __repr__(self) -> str:
    return f"CityscapesTFDS(split={self.split!r}, data_dir={self.data_dir!r})"

  def __getitem__(self, index: int) -> dict:
    record = self._source[index]
    name = record["image_id"]
    name = name.decode("utf-8") if isinstance(name, bytes) else str(name)
    label = map_label(
        np.asarray(record["segmentation_label"])[..., 0],
        labels.CITYSCAPES_ID_TO_TRAIN_ID,
        labels.CITYSCAPES_NUM_LABEL_IDS,
        f"TFDS cityscapes {self.split} example {name}",
    )
    return {"image": np.asarray(record["image_left"], np.uint8), "label": label, "name": name}


class ADE20KTFDS:
  """ADE20K through the ``ade20k_challenge2016`` builder (splits 'train'/'training',
  'validation'), prepared from ADEChallengeData2016.zip in ``manual_dir``."""

  def __init__(self, split: str, *, data_dir: str | None = None, manual_dir: str | None = None):
    # Importing the module registers the builder with TFDS.
    from ccnet_jax.data import ade20k_tfds_builder  # pylint: disable=g-import-not-at-top

    del ade20k_tfds_builder
    self.split = _tfds_split(split, "ADE20K")
    if self.split == "test":
      raise ValueError(
          "ADEChallengeData2016 has no labelled 'test' split; use 'training' or " "'validation'."
      )
    self.data_dir = data_dir
    builder = prepared_builder(
        "ade20k_challenge2016",
        data_dir=data_dir,
        manual_dir=manual_dir,
        zips=(ADE20K_ZIP,),
        help_text=ADE20K_HELP.replace(
            " and set data.root to the unzipped ADEChallengeData2016 " "folder", ""
        ),
    )
    self._source = builder.as_data_source(split=self.split)

  def __len__(self) -> int:
    return len(self._source)

  def __repr__(self) -> str:
    return f"ADE20KTFDS(split={self.split!r}, data_dir={self.data_dir!r})"

  def __getitem__(self, index: int) -> dict:
    record = self._source[index]
    name = record["name"]
    name = name.decode("utf-8") if isinstance(name, bytes) else str(name)
    label = map_label(
        np.asarray(record["annotation"])[..., 0],
        labels.ADE20K_ID_TO_TRAIN_ID,
        labels.ADE20K_NUM_LABEL_IDS,
        f"TFDS ade20k {self.split} example {name}",
    )
    return {"image": np.asarray(record["image"], np.uint8), "label": label, "name": name}
