"""Starts the explorer: the optional web libraries, the socket, the model, then the server."""

from __future__ import annotations

import importlib
import os
from typing import Sequence

from ccnet_jax.errors import UserError
from ccnet_jax.explore.backend import ExploredModel, InferenceSettings
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


def inference_settings(mode: str, crop_size: Sequence[int], overlap: float) -> InferenceSettings:
  """The settings of the flags, an error naming the flag."""
  try:
    return InferenceSettings(mode=mode, crop_size=tuple(crop_size), overlap=overlap)
  except ValueError as error:
    raise ValueError(f"--{error}") from None


def explore(
    model: str,
    *,
    port: int = 8000,
    host: str = "127.0.0.1",
    images: str | None = None,
    dataset: str | None = None,
    settings: InferenceSettings = InferenceSettings(),
    limits: Limits = Limits(),
) -> None:
  """Serves the explorer of ``model`` on ``host:port`` until Ctrl-C; the flags' meanings."""
  check_web_libraries()
  # pylint: disable=g-import-not-at-top  (the web libraries are optional)
  from ccnet_jax.explore.server import listen, make_app, serve, url_of

  if images and not os.path.isdir(images):
    raise FileNotFoundError(f"--images={images}: no such folder.")
  sock = listen(host, port)  # Before the model loads: a taken port fails at once.
  explored = ExploredModel(model, settings=settings, dataset=dataset)
  print(
      f"Exploring {explored.source} ({explored.dataset.name} classes) at {url_of(sock)}"
      " (Ctrl-C stops).",
      flush=True,
  )
  serve(make_app(Explorer(explored, limits), images), sock)
