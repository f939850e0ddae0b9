"""Draws what a model attends to.

  python -m ccnet_jax.visualize attention --model /tmp/demo --image img.png \
      --pixel 200,30 --pixel 100,10 --out figures

For each --pixel Y,X (row, column of the image) one row of the figure shows the image,
the loop-1 criss-cross weights of that pixel, its effective weights through all R loops
(both upsampled onto the image, the pixel circled) and the model's prediction. The figure
is written to OUT/<image name>_attention.png.
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from ccnet_jax.cli import run_user_command
from ccnet_jax.data.labels import DATASET_NAMES
from ccnet_jax.visualize.attention import parse_pixel, save_attention


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog="python -m ccnet_jax.visualize", description=__doc__.split("\n")[0]
  )
  commands = parser.add_subparsers(dest="command", required=True)
  attention = commands.add_parser("attention", help="criss-cross attention maps of pixels")
  attention.add_argument("--model", required=True, help="model directory or training workdir")
  attention.add_argument("--image", required=True, help="image file")
  attention.add_argument(
      "--pixel",
      required=True,
      action="append",
      metavar="Y,X",
      help="row,column of a pixel to show (repeat for several)",
  )
  attention.add_argument("--out", required=True, help="folder for the figure")
  attention.add_argument(
      "--dataset",
      choices=DATASET_NAMES,
      default=None,
      help="palette (default: from the model's class count)",
  )
  return parser


def _attention(args: argparse.Namespace) -> None:
  pixels = [parse_pixel(text) for text in args.pixel]
  path = save_attention(args.model, args.image, pixels, args.out, dataset=args.dataset)
  print(f"Wrote {path}", flush=True)


def main(argv: Sequence[str] | None = None) -> None:
  args = _parser().parse_args(argv)
  run_user_command(lambda: _attention(args))


if __name__ == "__main__":
  main(sys.argv[1:])
