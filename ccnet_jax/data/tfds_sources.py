"""Cityscapes and ADE20K through TensorFlow Datasets, read by random access from ArrayRecord.

TFDS cannot download either dataset for us: Cityscapes needs a login, so its builder prepares
from the two official zips placed in ``manual_dir``. The datasets are prepared once in the
``array_record`` file format, which ``builder.as_data_source`` reads by index; that is what the
grain pipeline needs (random access, no TensorFlow graph in the input path).

ADE20K: the TFDS catalogue's ``scene_parse150`` downloads ``ChallengeData2017/images.tar`` and
``annotations_instance.tar`` from sceneparsing.csail.mit.edu and nothing else; it has no manual
directory, and its annotations are the instance-segmentation PNGs of the 2017 challenge rather
than the 150-class semantic maps of ADEChallengeData2016 that CCNet is trained and evaluated on.
So ADE20K is read with the builder of ``ade20k_tfds_builder.py``, ``ade20k_challenge2016``, which
prepares ADEChallengeData2016.zip (the file users of mmsegmentation and the official code already have)
from ``manual_dir`` into ArrayRecord.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os

import numpy as np
import tensorflow_datasets as tfds

from ccnet_jax.data import labels
from ccnet_jax.data.ade20k_tfds_builder import ADE20K_ZIP  # Importing it registers the builder.
from ccnet_jax.data.folders import ADE20K_HELP, CITYSCAPES_HELP, map_label

_SPLITS = {
    "train": "train",
    "training": "train",
    "val": "validation",
    "validation": "validation",
    "test": "test",
}


@dataclasses.dataclass(frozen=True)
class TFDSDataset:
  """Where a dataset lives in TFDS: its builder, the zips it prepares from, its features."""

  title: str
  builder: str
  zips: tuple[str, ...]
  help_text: str  # What to download, for the error that says the zips are missing.
  splits: tuple[str, ...]  # The TFDS splits with labels.
  image: str  # Feature names of the image, the label-id map and the example's name.
  label: str
  name: str
  id_to_train_id: np.ndarray
  num_label_ids: int


DATASETS = {
    "cityscapes": TFDSDataset(
        title="Cityscapes",
        builder="cityscapes/semantic_segmentation",
        zips=("leftImg8bit_trainvaltest.zip", "gtFine_trainvaltest.zip"),
        help_text=CITYSCAPES_HELP.replace(" and unzip both into data.root", ""),
        splits=("train", "validation", "test"),
        image="image_left",
        label="segmentation_label",
        name="image_id",
        id_to_train_id=labels.CITYSCAPES_ID_TO_TRAIN_ID,
        num_label_ids=labels.CITYSCAPES_NUM_LABEL_IDS,
    ),
    "ade20k": TFDSDataset(
        title="ADE20K",
        builder="ade20k_challenge2016",
        zips=(ADE20K_ZIP,),
        help_text=ADE20K_HELP.replace(
            " and set data.root to the unzipped ADEChallengeData2016 folder", ""
        ),
        splits=("train", "validation"),
        image="image",
        label="annotation",
        name="name",
        id_to_train_id=labels.ADE20K_ID_TO_TRAIN_ID,
        num_label_ids=labels.ADE20K_NUM_LABEL_IDS,
    ),
}


def _tfds_split(split: str, dataset: TFDSDataset) -> str:
  if _SPLITS.get(split) not in dataset.splits:
    names = sorted(name for name, tfds_split in _SPLITS.items() if tfds_split in dataset.splits)
    raise ValueError(
        f"data split {split!r} is not a labelled {dataset.title} TFDS split; use one of {names}."
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


class TFDSSource:
  """One split of a dataset of :data:`DATASETS`, prepared (once) and read by index."""

  def __init__(
      self,
      dataset: str,
      split: str,
      *,
      data_dir: str | None = None,
      manual_dir: str | None = None,
  ):
    self.dataset = DATASETS[dataset]
    self.split = _tfds_split(split, self.dataset)
    self.data_dir = data_dir
    builder = prepared_builder(
        self.dataset.builder,
        data_dir=data_dir,
        manual_dir=manual_dir,
        zips=self.dataset.zips,
        help_text=self.dataset.help_text,
    )
    self._source = builder.as_data_source(split=self.split)

  def __len__(self) -> int:
    return len(self._source)

  def __repr__(self) -> str:
    return f"TFDSSource({self.dataset.builder!r}, split={self.split!r}, data_dir={self.data_dir!r})"

  def __getitem__(self, index: int) -> dict:
    record = self._source[index]
    name = record[self.dataset.name]
    name = name.decode("utf-8") if isinstance(name, bytes) else str(name)
    label = map_label(
        np.asarray(record[self.dataset.label])[..., 0],
        self.dataset.id_to_train_id,
        self.dataset.num_label_ids,
        f"TFDS {self.dataset.builder} {self.split} example {name}",
    )
    return {"image": np.asarray(record[self.dataset.image], np.uint8), "label": label, "name": name}
