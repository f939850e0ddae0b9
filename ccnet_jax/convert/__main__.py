"""Converts a released PyTorch checkpoint into a model directory (``model_dir.save_model``).

  python -m ccnet_jax.convert official ccnet_r101_cityscapes.pth models/ccnet_official
  python -m ccnet_jax.convert mmseg ccnet_r101-d8_769x769_80k.pth models/ccnet_mmseg
  python -m ccnet_jax.convert mit resnet101-imagenet.pth models/resnet101_mit

The arguments are FORMAT (official, mmseg, mit, torchvision, v1c), the checkpoint file (.pth,
.pt, .safetensors, .npz) and the model directory to write. Whole models ('official', 'mmseg')
are evaluated with ``python eval.py --config ... --model=OUT_DIR``; ImageNet backbones ('mit',
'torchvision', 'v1c') are written backbone-only, as initialisation for training
(``--config.train.init_from=OUT_DIR``).
"""

from __future__ import annotations

import json

from absl import flags

from ccnet_jax import cli
from ccnet_jax.convert import io, loaders, mapping
from ccnet_jax.errors import UserError
from ccnet_jax.models import model_dir
from ccnet_jax.models.resnet import ResNet

_NUM_CLASSES = flags.DEFINE_integer(
    "num_classes", None, "Check the classifier size (default: read from the checkpoint)."
)
_RECURRENCE = flags.DEFINE_integer(
    "recurrence", None, "R, the number of criss-cross steps (default: 2, or mmseg's meta)."
)
_DEPTH = flags.DEFINE_integer(
    "depth", None, "Check the ResNet depth (default: read from the checkpoint)."
)


def convert(
    format: str,  # pylint: disable=redefined-builtin
    path: str,
    output: str,
    *,
    num_classes: int | None = None,
    recurrence: int | None = None,
    depth: int | None = None,
) -> dict:
  """Reads, converts and writes one checkpoint; returns a summary of what was written."""
  state_dict, meta = io.read_checkpoint(path)
  model, config, preprocessing = loaders.load_checkpoint(
      format, state_dict, meta=meta, num_classes=num_classes, recurrence=recurrence, depth=depth
  )
  directory = model_dir.save_model(output, model, config, preprocessing=preprocessing)
  return {
      "wrote": directory,
      "part": "backbone" if isinstance(model, ResNet) else "all",
      "model": config.name,
      "depth": config.backbone.depth,
      "stem": config.backbone.stem,
      "num_classes": None if isinstance(model, ResNet) else config.num_classes,
      "recurrence": None if isinstance(model, ResNet) else config.head.recurrence,
      "preprocessing": preprocessing.to_json(),
  }


def main(arguments: list[str]) -> None:
  if len(arguments) != 3 or arguments[0] not in mapping.FORMATS:
    raise UserError(
        f"expected FORMAT CHECKPOINT OUT_DIR with FORMAT one of {', '.join(sorted(mapping.FORMATS))},"
        f" got {' '.join(arguments) or 'nothing'} (--help)."
    )
  summary = convert(
      *arguments, num_classes=_NUM_CLASSES.value, recurrence=_RECURRENCE.value, depth=_DEPTH.value
  )
  print(json.dumps(summary, indent=2))


if __name__ == "__main__":
  cli.run(
      main, kept="OUT_DIR is left as it was (a model directory is written whole or not at all)."
  )
