"""Stores a dataset's splits decoded (uint8 images, train-id labels) as ArrayRecord files.

  python -m ccnet_jax.data --config=configs/cityscapes.py \
      --config.data.root=/data/cityscapes /data/cityscapes_decoded
  python train.py --config configs/cityscapes.py --config.data.decoded_dir=/data/cityscapes_decoded

The argument is the folder to write. It reads the config's ``data.train_split`` and
``data.eval_split`` (override them to write others) from ``data.source`` as the loaders would,
label mapping applied, and writes each to OUT_DIR/<dataset>-<split>.array_record, whole or not
at all; a missing split stops it before anything is written. Training and
evaluation with ``data.decoded_dir=OUT_DIR`` then read the same examples without decoding
images: the same batches, augmentation and resume positions.
"""

from __future__ import annotations

import json
import os

from ml_collections import config_flags

from ccnet_jax import cli
from ccnet_jax.data import decoded
from ccnet_jax.data.sources import build_source
from ccnet_jax.errors import UserError

_CONFIG = config_flags.DEFINE_config_file("config", None, cli.CONFIG_HELP)


def convert_splits(config, splits: list[str], out_dir: str) -> dict:
  """Writes each split of ``config`` (a data config) to ``out_dir``; returns what was written."""
  config = config.copy_and_resolve_references()
  config.decoded_dir = ""  # Read the dataset itself.
  sources = {split: build_source(config, split) for split in splits}
  os.makedirs(out_dir, exist_ok=True)
  written = {}
  for split, source in sources.items():
    path = decoded.split_file(out_dir, config.name, split)

    def progress(done: int, total: int, split=split) -> None:
      if done % 100 == 0 or done == total:
        print(f"{split}: {done}/{total}", flush=True)

    count = decoded.write_split(source, path, progress=progress)
    written[split] = {"file": path, "examples": count, "bytes": os.path.getsize(path)}
  return written


def main(arguments: list[str]) -> None:
  if len(arguments) != 1:
    raise UserError(
        f"expected one argument, the folder to write, got {' '.join(arguments) or 'nothing'}"
        " (--help)."
    )
  config = cli.required(_CONFIG).data
  splits = list(dict.fromkeys([config.train_split, config.eval_split]))
  print(json.dumps(convert_splits(config, splits, arguments[0]), indent=2))


if __name__ == "__main__":
  cli.run(main)
