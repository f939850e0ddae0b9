"""Outputs written whole or not at all: each goes to a temporary name and is renamed when complete.

Whatever stops a command (an error, Ctrl-C, SIGTERM, a full disk), the final name holds the
previous file or the complete new one, never half of one. A temporary is deleted when the
writing fails, and :func:`discard_in_flight` deletes those still being written (what a
command's signal handler calls before it exits, see ``ccnet_jax.interrupts``); only ``kill -9``
can leave one behind, as a hidden ``.NAME.partial-XXXXXXXX`` that :func:`is_partial`
recognises (a later run ignores it).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
from typing import Iterator

from ccnet_jax.errors import UserError

PARTIAL = ".partial-"

_in_flight: set[str] = set()  # Temporaries being written, for discard_in_flight.
_retired: dict[str, str] = {}  # Folders renamed aside to be replaced: {aside: original name}.


def is_partial(name: str) -> bool:
  """Whether a file or folder name is one of this module's temporaries."""
  name = os.path.basename(os.fspath(name))
  return name.startswith(".") and PARTIAL in name


def temporary_name(path: str | os.PathLike) -> str:
  """A hidden name beside ``path`` with its extension (writers that choose the format from the
  extension, PIL and ffmpeg, choose the same)."""
  directory, name = os.path.split(os.path.abspath(os.fspath(path)))
  stem, extension = os.path.splitext(name)
  return os.path.join(directory, f".{stem}{PARTIAL}{secrets.token_hex(4)}{extension}")


def discard_in_flight() -> None:
  """Deletes every temporary still being written; the final names keep what they held (a
  folder being replaced is put back if the new one is not in its place yet)."""
  for path in list(_in_flight):
    _remove(path)
  _in_flight.clear()
  for aside, original in list(_retired.items()):
    if os.path.lexists(original):
      _remove(aside)
    else:
      with contextlib.suppress(OSError):
        os.replace(aside, original)
  _retired.clear()


def _remove(path: str) -> None:
  if os.path.isdir(path) and not os.path.islink(path):
    shutil.rmtree(path, ignore_errors=True)
  elif os.path.lexists(path):
    with contextlib.suppress(OSError):
      os.remove(path)


@contextlib.contextmanager
def writing(path: str | os.PathLike) -> Iterator[str]:
  """Yields a temporary path to write ``path``'s content to; it becomes ``path`` when the block
  ends normally and is deleted when it raises (KeyboardInterrupt included)."""
  path = os.path.abspath(os.fspath(path))
  os.makedirs(os.path.dirname(path), exist_ok=True)
  temporary = temporary_name(path)
  _in_flight.add(temporary)
  try:
    yield temporary
    os.replace(temporary, path)
  except OSError as error:
    _remove(temporary)
    if error.filename:
      raise
    # A writer that writes through a file object (PIL) raises without naming the file.
    raise OSError(error.errno, error.strerror or str(error), path) from error
  except BaseException:
    _remove(temporary)
    raise
  finally:
    _in_flight.discard(temporary)


def _check_parents(path: str, name: str) -> None:
  """Refuses a ``path`` below a file, or below a folder that cannot be created."""
  parent = os.path.dirname(os.path.abspath(path))
  while not os.path.lexists(parent):
    parent = os.path.dirname(parent)
  if not os.path.isdir(parent):
    raise UserError(f"{name}={path} is below {parent}, which is a file; name a folder elsewhere.")


def check_folder(path: str | os.PathLike, name: str = "--out") -> None:
  """Refuses, in one line and before any work, an output folder ``path`` (the flag ``name``)
  that is a file or lies below one."""
  path = os.fspath(path)
  if os.path.lexists(path) and not os.path.isdir(path):
    raise UserError(f"{name}={path} is a file; name a folder for the outputs.")
  _check_parents(path, name)


def make_folder(path: str | os.PathLike, name: str = "--out") -> None:
  """Creates the output folder ``path`` (the flag ``name``), or names in one line why it cannot
  be one (:func:`check_folder`), before any work."""
  path = os.fspath(path)
  check_folder(path, name)
  try:
    os.makedirs(path, exist_ok=True)
  except OSError as error:
    raise UserError(
        f"{name}={path} cannot be created ({error.strerror}); name a folder you can write to."
    ) from None


def check_replaceable(path: str | os.PathLike, *, overwrite: bool, flag: str = "--overwrite"):
  """Refuses, before any work, a ``path`` that :func:`replacing_directory` would not replace:
  a file, a folder below a file, or a non-empty folder without ``overwrite``."""
  path = os.fspath(path)
  _check_parents(path, "OUT")
  if os.path.lexists(path) and not os.path.isdir(path):
    raise FileExistsError(f"{path} exists and is not a folder; name a new folder.")
  if os.path.isdir(path) and os.listdir(path) and not overwrite:
    raise FileExistsError(
        f"{path} is not empty; name a new folder, or add {flag} to replace it whole."
    )


@contextlib.contextmanager
def replacing_directory(path: str | os.PathLike, *, overwrite: bool) -> Iterator[str]:
  """Yields an empty folder beside ``path`` to fill; when the block ends normally it replaces
  ``path`` whole (an existing ``path`` only if empty or ``overwrite``), else it is deleted.

  The old folder is renamed aside, the new one renamed in, then the old one deleted: a reader
  sees the old folder or the whole new one (for an instant, neither).
  """
  path = os.path.abspath(os.fspath(path))
  check_replaceable(path, overwrite=overwrite)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  staging = temporary_name(path)
  _in_flight.add(staging)
  os.mkdir(staging)
  try:
    yield staging
    check_replaceable(path, overwrite=overwrite)  # Another writer may have filled it since.
    aside = None
    if os.path.lexists(path):
      aside = temporary_name(path)
      _retired[aside] = path
      os.replace(path, aside)
    os.replace(staging, path)
    if aside:
      _remove(aside)
      del _retired[aside]
  except BaseException:
    _remove(staging)
    raise
  finally:
    _in_flight.discard(staging)
