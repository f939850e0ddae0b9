"""Explore a model in the browser: its labels, and where a clicked pixel looks.

  python -m ccnet_jax.explore --model=/tmp/demo [--port 8000] [--images FOLDER] [--host HOST]

Serves a page on http://127.0.0.1:8000/ (this machine only; --host 0.0.0.0 opens it to the
network) where one picks an image (a file, a drop, a generated demo scene or one of --images),
sees the model's prediction over it, and clicks a pixel to see its criss-cross attention after
loop 1 and through all loops, with its class probabilities. Beside the page, POST /predict and
POST /attention answer programs (see ccnet_jax/explore/server.py).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import Sequence

from ccnet_jax.cli import run_user_command
from ccnet_jax.errors import UserError
from ccnet_jax.explore.backend import DATASET_NAMES, MODES, ExploredModel
from ccnet_jax.explore.session import Explorer, Limits

REQUIREMENTS = "requirements-explore.txt"


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog="python -m ccnet_jax.explore", description=__doc__.split("\n")[0]
  )
  parser.add_argument("--model", required=True, help="model directory or training workdir")
  parser.add_argument("--port", type=int, default=8000, help="port (0: any free one)")
  parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
  parser.add_argument("--images", default=None, help="folder of images offered in the page")
  parser.add_argument(
      "--dataset",
      choices=DATASET_NAMES,
      default=None,
      help="class names and colours (default: from the model's class count)",
  )
  parser.add_argument("--mode", choices=MODES, default="whole", help="default inference mode")
  parser.add_argument("--crop_size", default="769,769", help="sliding window height,width")
  parser.add_argument("--overlap", type=float, default=1 / 3, help="sliding window overlap")
  parser.add_argument(
      "--max_upload_mb", type=float, default=Limits.max_bytes / 2**20, help="largest upload"
  )
  parser.add_argument(
      "--max_megapixels", type=float, default=Limits.max_pixels / 1e6, help="largest image"
  )
  return parser


def check_web_libraries() -> None:
  """One line naming the requirements file when the optional web libraries are missing."""
  for name in ("starlette", "uvicorn"):
    try:
      importlib.import_module(name)
    except ImportError:
      raise UserError(
          f"python -m ccnet_jax.explore needs starlette and uvicorn ({name} is missing):"
          f" python -m pip install -r {REQUIREMENTS}"
      ) from None


def _check_sliding(crop_size: str, overlap: float) -> tuple[int, int]:
  """(height, width) of the sliding window, checked with the overlap."""
  try:
    height, width = (int(part) for part in crop_size.split(","))
  except ValueError:
    height = width = 0
  if min(height, width) < 1:
    raise ValueError(f"--crop_size={crop_size} must be two positive integers HEIGHT,WIDTH.")
  if not 0 <= overlap < 1:
    raise ValueError(f"--overlap={overlap} must be in [0, 1).")
  return height, width


def _explore(args: argparse.Namespace) -> None:
  check_web_libraries()
  # pylint: disable=g-import-not-at-top  (the web libraries are optional)
  from ccnet_jax.explore.server import listen, make_app, serve, url_of

  if args.images and not os.path.isdir(args.images):
    raise FileNotFoundError(f"--images={args.images}: no such folder.")
  limits = Limits(
      max_bytes=int(args.max_upload_mb * 2**20), max_pixels=int(args.max_megapixels * 1e6)
  )
  crop_size = _check_sliding(args.crop_size, args.overlap)
  sock = listen(args.host, args.port)  # Before the model loads: a taken port fails at once.
  model = ExploredModel(
      args.model, dataset=args.dataset, mode=args.mode, crop_size=crop_size, overlap=args.overlap
  )
  print(
      f"Exploring {model.model_dir} ({model.dataset.name} classes) at {url_of(sock)}"
      " (Ctrl-C stops).",
      flush=True,
  )
  serve(make_app(Explorer(model, limits), args.images), sock)


def main(argv: Sequence[str] | None = None) -> None:
  args = _parser().parse_args(argv)
  run_user_command(lambda: _explore(args))


if __name__ == "__main__":
  main(sys.argv[1:])
