"""Starts the explorer: the optional web libraries, the socket, the model, then the server."""

from __future__ import annotations

import importlib
import os
from typing import Sequence

from ccnet_jax.errors import UserError
from ccnet_jax.explore.backend import ExploredModel
from ccnet_jax.explore.session import Explorer, Limits

REQUIREMENTS = "requirements-explore.txt"


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


def check_sliding(crop_size: Sequence[int], overlap: float) -> tuple[int, int]:
  """(height, width) of the sliding window, checked with the overlap."""
  if len(crop_size) != 2 or min(crop_size) < 1:
    raise ValueError(
        f"--crop_size={','.join(map(str, crop_size))} must be two positive integers HEIGHT,WIDTH."
    )
  if not 0 <= overlap < 1:
    raise ValueError(f"--overlap={overlap} must be in [0, 1).")
  return int(crop_size[0]), int(crop_size[1])


def explore(
    model: str,
    *,
    port: int = 8000,
    host: str = "127.0.0.1",
    images: str | None = None,
    dataset: str | None = None,
    mode: str = "whole",
    crop_size: Sequence[int] = (769, 769),
    overlap: float = 1 / 3,
    limits: Limits = Limits(),
) -> None:
  """Serves the explorer of ``model`` on ``host:port`` until Ctrl-C; the flags' meanings."""
  check_web_libraries()
  # pylint: disable=g-import-not-at-top  (the web libraries are optional)
  from ccnet_jax.explore.server import listen, make_app, serve, url_of

  if images and not os.path.isdir(images):
    raise FileNotFoundError(f"--images={images}: no such folder.")
  crop_size = check_sliding(crop_size, overlap)
  sock = listen(host, port)  # Before the model loads: a taken port fails at once.
  explored = ExploredModel(model, dataset=dataset, mode=mode, crop_size=crop_size, overlap=overlap)
  print(
      f"Exploring {explored.model_dir} ({explored.dataset.name} classes) at {url_of(sock)}"
      " (Ctrl-C stops).",
      flush=True,
  )
  serve(make_app(Explorer(explored, limits), images), sock)
