"""Dataset and augmentation settings as ConfigDicts, one preset per dataset."""

from __future__ import annotations

import dataclasses

import ml_collections

from ccnet_jax.models.preprocessing import IMAGENET, OFFICIAL


def _common() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(
      {
          "name": "",
          "source": "folders",
          "root": "/path/to/dataset",
          "tfds_data_dir": "",
          "manual_dir": "",
          # A folder of splits stored decoded (python -m ccnet_jax.data); '' reads data.source.
          "decoded_dir": "",
          "train_split": "train",
          "eval_split": "val",
          "crop_size": (512, 512),
          # Scales are drawn from {scale_min + k * scale_step} when scale_step > 0,
          # uniformly from [scale_min, scale_max] when scale_step == 0.
          "scale_min": 0.5,
          "scale_max": 2.0,
          "scale_step": 0.0,
          "flip": True,
          # The input normalisation (models.preprocessing.Preprocessing.from_config).
          **dataclasses.asdict(IMAGENET),
          # Grain worker processes for training (0 = in the main process) and batches each
          # worker buffers; evaluation decodes with max(num_workers, 2) threads.
          "num_workers": 0,
          "prefetch": 2,
          "synthetic": {"num_train": 0, "num_eval": 0, "image_size": (64, 64), "seed": 0},
      }
  )


def data_config(name: str) -> ml_collections.ConfigDict:
  """Returns the preset for 'cityscapes', 'ade20k', 'voc' or 'synthetic'."""
  config = _common()
  config.name = name
  if name == "cityscapes":
    config.root = "/path/to/cityscapes"
    config.crop_size = (769, 769)
    # Official CCNet: scale = 0.5 + random.randint(0, 11) / 10 (inclusive), {0.5, ..., 1.6}.
    config.scale_min, config.scale_max, config.scale_step = 0.5, 1.6, 0.1
    config.update(dataclasses.asdict(OFFICIAL))
  elif name == "ade20k":
    config.root = "/path/to/ADEChallengeData2016"
    config.train_split, config.eval_split = "training", "validation"
    config.crop_size = (512, 512)
    config.scale_min, config.scale_max, config.scale_step = 0.5, 2.0, 0.0
  elif name == "voc":
    # mmsegmentation's pascal_voc12_aug: SBD-augmented train (10582 images), VOC val (1449).
    config.root = "/path/to/folder_with_VOCdevkit"
    config.train_split, config.eval_split = "train_aug", "val"
    config.crop_size = (512, 512)
    config.scale_min, config.scale_max, config.scale_step = 0.5, 2.0, 0.0
  elif name == "synthetic":
    config.source = "synthetic"
    config.root = ""
    # Tall scenes put the shapes at least 112 px below their cue, beyond what a small dilated
    # ResNet uses (see synthetic.py). The stripe must stay in the crop: no rescaling, only flips.
    config.crop_size = (256, 64)
    config.scale_min, config.scale_max, config.scale_step = 1.0, 1.0, 0.0
    config.synthetic = {"num_train": 2048, "num_eval": 64, "image_size": (256, 64), "seed": 0}
    config.mean = (127.5, 127.5, 127.5)
    config.std = (64.0, 64.0, 64.0)
  else:
    raise ValueError(
        f"data.name={name!r} is unknown; use 'cityscapes', 'ade20k', 'voc' or 'synthetic'."
    )
  return config
