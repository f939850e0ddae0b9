"""The one place that turns a data config and a split name into a random-access source.

A source has ``__len__`` and ``__getitem__(i) -> {'image': uint8 (H, W, 3) RGB, 'label': uint8
(H, W) train ids with 255 = ignore, 'name': str}``, which is all the pipeline needs.
"""

from __future__ import annotations

import os

import ml_collections

from ccnet_jax.data.synthetic import SyntheticLongRange


def _check_split(config: ml_collections.ConfigDict, split: str) -> None:
  if split not in (config.train_split, config.eval_split):
    raise ValueError(
        f"split {split!r} is neither data.train_split={config.train_split!r} nor "
        f"data.eval_split={config.eval_split!r}; set one of them to the split you want."
    )


def _decoded_split(config: ml_collections.ConfigDict, split: str):
  from ccnet_jax.data import decoded  # pylint: disable=g-import-not-at-top

  path = decoded.split_file(config.decoded_dir, config.name, split)
  if not os.path.isfile(path):
    raise FileNotFoundError(
        f"data.decoded_dir={config.decoded_dir!r} has no {os.path.basename(path)}; write it "
        f"with python -m ccnet_jax.data --config=CONFIG {config.decoded_dir}, or set "
        "data.decoded_dir='' to read data.source."
    )
  return decoded.DecodedSplit(path)


def build_source(config: ml_collections.ConfigDict, split: str):
  """Returns the source of ``split`` for ``config.name``: the decoded file of it in
  ``config.decoded_dir`` when that is set, else the dataset read from ``config.source``."""
  _check_split(config, split)
  if config.decoded_dir:
    return _decoded_split(config, split)
  if config.source == "synthetic":
    settings = config.synthetic
    if split == config.train_split:
      return SyntheticLongRange(settings.num_train, settings.image_size, settings.seed)
    return SyntheticLongRange(
        settings.num_eval, settings.image_size, settings.seed, start_index=settings.num_train
    )
  if config.source == "folders":
    from ccnet_jax.data import folders  # pylint: disable=g-import-not-at-top

    if config.name == "cityscapes":
      return folders.CityscapesFolders(config.root, split)
    if config.name == "ade20k":
      return folders.ADE20KFolders(config.root, split)
    if config.name == "voc":
      from ccnet_jax.data import voc  # pylint: disable=g-import-not-at-top

      return voc.VOCFolders(config.root, split)
  elif config.source == "tfds":
    if config.name == "voc":
      raise ValueError(
          "data.source='tfds' has no PASCAL VOC segmentation (TFDS' voc/2012 holds boxes, "
          "not masks); set data.source='folders' and data.root to the folder with VOCdevkit."
      )
    from ccnet_jax.data import tfds_sources  # pylint: disable=g-import-not-at-top

    if config.name in tfds_sources.DATASETS:
      return tfds_sources.TFDSSource(
          config.name,
          split,
          data_dir=config.tfds_data_dir or None,
          manual_dir=config.manual_dir or None,
      )
  else:
    raise ValueError(
        f"data.source={config.source!r} is unknown; use 'folders', 'tfds' or 'synthetic'."
    )
  raise ValueError(
      f"data.source={config.source!r} is not available for data.name="
      f"{config.name!r}; use 'cityscapes' or 'ade20k' with it, or source='synthetic'."
  )
