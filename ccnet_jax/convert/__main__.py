"""Converts a released PyTorch checkpoint into a model directory (``model_dir.save_model``).

  python -m ccnet_jax.convert official ccnet_r101_cityscapes.pth models/ccnet_official
  python -m ccnet_jax.convert mmseg ccnet_r101-d8_769x769_80k.pth models/ccnet_mmseg
  python -m ccnet_jax.convert mit resnet101-imagenet.pth models/resnet101_mit

Whole models ('official', 'mmseg') are evaluated with ``python eval.py --config ...
--model=OUT_DIR``; ImageNet backbones ('mit', 'torchvision', 'v1c') are written
backbone-only, as initialisation for training (``--config.train.init_from=OUT_DIR``).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Sequence

from ccnet_jax.convert import io, loaders, mapping
from ccnet_jax.models import model_dir
from ccnet_jax.models.resnet import ResNet


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog="python -m ccnet_jax.convert", description=__doc__.split("\n")[0]
  )
  parser.add_argument("format", choices=sorted(mapping.FORMATS))
  parser.add_argument("input", help="checkpoint file (.pth, .pt, .safetensors, .npz)")
  parser.add_argument("output", help="model directory to write")
  parser.add_argument(
      "--num-classes",
      type=int,
      default=None,
      help="check the classifier size (default: read from the checkpoint)",
  )
  parser.add_argument(
      "--recurrence",
      type=int,
      default=None,
      help="R, the number of criss-cross steps (default: 2, or mmseg's meta)",
  )
  parser.add_argument(
      "--depth",
      type=int,
      default=None,
      help="check the ResNet depth (default: read from the checkpoint)",
  )
  return parser


def convert(
    format: str,
    path: str,
    output: str,
    *,  # pylint: disable=redefined-builtin
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
      "preprocessing": preprocessing,
  }


def main(argv: Sequence[str] | None = None) -> int:
  args = _parser().parse_args(argv)
  try:
    summary = convert(
        args.format,
        args.input,
        args.output,
        num_classes=args.num_classes,
        recurrence=args.recurrence,
        depth=args.depth,
    )
  except (ValueError, FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  print(json.dumps(summary, indent=2))
  return 0


if __name__ == "__main__":
  sys.exit(main())
