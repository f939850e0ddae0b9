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

from flax import nnx

from ccnet_jax.convert import io, loaders, mapping
from ccnet_jax.models import model_dir
from ccnet_jax.models.registry import build_model
from ccnet_jax.models.resnet import ResNet


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog="python -m ccnet_jax.convert", description=__doc__.split("\n")[0]
  )
  parser.add_argument("format", choices=sorted(mapping.FORMATS))
  parser.add_argument("input", help="checkpoint file (.pth, .pt, .safetensors, .npz)")
  parser.add_argument("output", help="model directory to write")
  parser.add_argument("--num-classes", type=int, default=None,
                      help="check the classifier size (default: read from the checkpoint)")
  parser.add_argument("--recurrence", type=int, default=None,
                      help="R, the number of criss-cross steps (default: 2, or mmseg's meta)")
  parser.add_argument("--depth", type=int, default=None,
                      help="check the ResNet depth (default: read from the checkpoint)")
  return parser


def convert(format: str, path: str, output: str, *,  # pylint: disable=redefined-builtin
            num_classes: int | None = None, recurrence: int | None = None,
            depth: int | None = None) -> dict:
  """Reads, converts and writes one checkpoint; returns a summary of what was written."""
  state_dict, meta = io.read_checkpoint(path)
  if format == "official":
    config = loaders.official_config(
        state_dict, num_classes=num_classes, recurrence=2 if recurrence is None else recurrence
    )
    if depth is not None and depth != config.backbone.depth:
      raise ValueError(f"--depth={depth} but the checkpoint is a ResNet-{config.backbone.depth}.")
    model = model_dir.empty_module(lambda: build_model(config))
    preprocessing = loaders.OFFICIAL_PREPROCESSING
  elif format == "mmseg":
    config = loaders.mmseg_config(
        state_dict, depth=depth, num_classes=num_classes, recurrence=recurrence, meta=meta
    )
    model = model_dir.empty_module(lambda: build_model(config))
    preprocessing = loaders.IMAGENET_PREPROCESSING
  else:
    if num_classes is not None or recurrence is not None:
      raise ValueError(
          f"--num-classes and --recurrence do not apply to the backbone-only {format!r} format."
      )
    config = loaders.backbone_config(state_dict, format, depth=depth)
    model = model_dir.empty_module(lambda: ResNet(**config.backbone.to_dict(), rngs=nnx.Rngs(0)))
    preprocessing = loaders.IMAGENET_PREPROCESSING
  mapping.load_into(model, state_dict, format)
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
        args.format, args.input, args.output, num_classes=args.num_classes,
        recurrence=args.recurrence, depth=args.depth,
    )
  except (ValueError, FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  print(json.dumps(summary, indent=2))
  return 0


if __name__ == "__main__":
  sys.exit(main())
