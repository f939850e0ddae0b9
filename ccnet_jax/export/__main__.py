"""Exports a model directory for serving.

  python -m ccnet_jax.export models/ccnet_official exported/sm --format=saved_model
  python -m ccnet_jax.export runs/cs/model exported/lite --format=tflite --height=512 --width=512
  python -m ccnet_jax.export runs/cs/model exported/hlo --format=stablehlo --batch=0
  python -m ccnet_jax.export runs/cs/model exported/onnx --format=onnx --batch=0

Sizes left out (or 0) are symbolic: the export accepts any size there at run time.
TFLite needs all three fixed.
"""

from __future__ import annotations

import argparse
import json
from typing import Sequence

from ccnet_jax.cli import run_user_command
from ccnet_jax.export import FORMATS, export_model


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog="python -m ccnet_jax.export", description=__doc__.split("\n")[0]
  )
  parser.add_argument("model_dir", help="model directory (a run's model/, or a converted one)")
  parser.add_argument("output", help="directory to write the export into")
  parser.add_argument("--format", choices=FORMATS, required=True)
  parser.add_argument("--batch", type=int, default=1, help="fixed batch size; 0 = any (default 1)")
  parser.add_argument("--height", type=int, default=0, help="fixed image height; 0 = any")
  parser.add_argument("--width", type=int, default=0, help="fixed image width; 0 = any")
  parser.add_argument(
      "--dtype",
      default=None,
      help="computation dtype (default: the model's; float32 for CPU runtimes)",
  )
  parser.add_argument(
      "--opset",
      type=int,
      default=None,
      help="ONNX opset (--format=onnx; default: the latest TensorRT 10 reads)",
  )
  return parser


def main(argv: Sequence[str] | None = None) -> None:
  args = _parser().parse_args(argv)

  def command():
    summary = export_model(
        args.model_dir,
        args.output,
        format=args.format,
        batch=args.batch or None,
        height=args.height or None,
        width=args.width or None,
        dtype=args.dtype,
        opset=args.opset,
    )
    print(json.dumps(summary, indent=2))

  run_user_command(command)


if __name__ == "__main__":
  main()
