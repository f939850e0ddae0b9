"""The compilers for absent devices (libtpu, the CUDA plugin), kept out of site-packages.

Installed next to JAX, both announce themselves on every ``import jax``: some thirty
lines of CUDA and TPU start-up logs on stderr, in every command of the project. They
are installed into a folder of their own instead (:data:`INSTALL`), which only this
package puts on ``sys.path``, and their start-up logs are kept off the terminal.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import os
import pathlib
import sys
from typing import Iterator

from ccnet_jax.errors import UserError

SITE_ENV = "CCNET_JAX_AOT_SITE"
REQUIREMENTS = "requirements-aot.txt"
INSTALL = f"python -m pip install --no-deps --upgrade --target .aot -r {REQUIREMENTS}"

# What each platform needs, by the module that provides it and the package that installs it.
_MODULES = {"tpu": ("libtpu", "libtpu"), "gpu": ("jax_plugins.xla_cuda12", "jax-cuda12-plugin")}


def site_dir() -> pathlib.Path:
  """``$CCNET_JAX_AOT_SITE``, else ``.aot`` in the checkout that holds this package."""
  if os.environ.get(SITE_ENV):
    return pathlib.Path(os.environ[SITE_ENV])
  return pathlib.Path(__file__).resolve().parents[2] / ".aot"


def require(platform: str) -> None:
  """Makes the compiler for ``platform`` ('tpu' or 'gpu') importable, or says how to install it.

  Must run before JAX initialises its backends (its plugins are discovered once).
  The folder goes last on ``sys.path``: it holds the plugins alone (installed with
  ``--no-deps``), never another copy of JAX.
  """
  site = str(site_dir())
  if os.path.isdir(site) and site not in sys.path:
    sys.path.append(site)
    importlib.invalidate_caches()
  module, package = _MODULES[platform]
  try:
    found = importlib.util.find_spec(module) is not None
  except ModuleNotFoundError:
    found = False
  if not found:
    raise UserError(
        f"compiling for {platform.upper()} needs {package}, which is not installed in {site}"
        f" or with JAX: run `{INSTALL}` in the checkout (or set {SITE_ENV} to the folder"
        " that holds it)."
    )


@contextlib.contextmanager
def native_logs_discarded() -> Iterator[None]:
  """Discards what native libraries write to stderr (fd 2) in the context.

  libtpu and the CUDA plugin log their start-up (no TPU host found, no CUDA driver)
  to fd 2 whatever Python's logging says. With ``CCNET_JAX_TRACEBACK=1`` nothing is
  discarded; errors reach the caller as exceptions either way.
  """
  if os.environ.get("CCNET_JAX_TRACEBACK"):
    yield
    return
  sys.stderr.flush()
  saved = os.dup(2)
  with open(os.devnull, "wb") as devnull:
    os.dup2(devnull.fileno(), 2)
  try:
    yield
  finally:
    sys.stderr.flush()
    os.dup2(saved, 2)
    os.close(saved)
