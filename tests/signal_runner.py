"""Runs a command that sends itself a signal at one fixed point, for test_command_signals.py.

  python tests/signal_runner.py POINT SIGNAL predict.py --model=... [flags]
  python tests/signal_runner.py POINT SIGNAL -m ccnet_jax.export MODEL OUT [flags]

SIGNAL is INT, TERM or HUP. POINT is where the signal is sent, the same place on every run:

  import:MODULE    when the import of MODULE starts (the command's start-up)
  gc               inside the first garbage collection: a callback, where a KeyboardInterrupt
                   raised by Python's own handler is swallowed and the command goes on
  compile          when XLA starts compiling a program (``jax.stages.Lowered.compile``)
  png:N            while the N-th PNG is being written: after half of its bytes
  call:MODULE:ATTR when the function MODULE.ATTR (dotted) is called, before it runs
"""

from __future__ import annotations

import gc
import importlib
import importlib.abc
import io
import os
import runpy
import signal
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _send(signum: int) -> None:
  os.kill(os.getpid(), signum)


class _OnImport(importlib.abc.MetaPathFinder):

  def __init__(self, module: str, signum: int):
    self.module, self.signum = module, signum

  def find_spec(self, name, path, target=None):
    if name == self.module:
      sys.meta_path.remove(self)
      _send(self.signum)
    return None


def _on_gc(signum: int) -> None:
  def callback(phase, info):
    del info
    if phase == "start":
      gc.callbacks.remove(callback)
      _send(signum)

  gc.callbacks.append(callback)


def _wrap(owner, name: str, before) -> None:
  original = getattr(owner, name)

  def wrapper(*args, **kwargs):
    before(*args, **kwargs)
    return original(*args, **kwargs)

  setattr(owner, name, wrapper)


def _on_png(number: int, signum: int) -> None:
  from PIL import Image  # pylint: disable=g-import-not-at-top

  original = Image.Image.save
  count = []

  def save(self, fp, format=None, **params):  # pylint: disable=redefined-builtin
    count.append(1)
    if len(count) == number:
      encoded = io.BytesIO()
      original(self, encoded, format=format or "PNG", **params)
      with open(fp, "wb") as f:
        f.write(encoded.getvalue()[: len(encoded.getvalue()) // 2])
        f.flush()
        _send(signum)
        f.write(encoded.getvalue()[len(encoded.getvalue()) // 2 :])  # Never reached.
      return None
    return original(self, fp, format=format, **params)

  Image.Image.save = save


def _on_call(target: str, signum: int) -> None:
  module_name, attribute = target.split(":", 1)
  owner = importlib.import_module(module_name)
  *path, name = attribute.split(".")
  for part in path:
    owner = getattr(owner, part)
  _wrap(owner, name, lambda *args, **kwargs: _send(signum))


def arm(point: str, signum: int) -> None:
  kind, _, argument = point.partition(":")
  if kind == "import":
    sys.meta_path.insert(0, _OnImport(argument, signum))
  elif kind == "gc":
    _on_gc(signum)
  elif kind == "compile":
    import jax  # pylint: disable=g-import-not-at-top

    _wrap(jax.stages.Lowered, "compile", lambda *args, **kwargs: _send(signum))
  elif kind == "png":
    _on_png(int(argument), signum)
  elif kind == "call":
    _on_call(argument, signum)
  else:
    raise SystemExit(f"unknown point {point!r}")


def main() -> None:
  point, name, *command = sys.argv[1:]
  signum = getattr(signal, f"SIG{name}")
  # The runner stands for a command started at a terminal, where Python turns SIGINT into
  # KeyboardInterrupt. Started as a background job (`cmd &`, nohup) it inherits SIGINT
  # ignored, which the commands rightly keep: a suite run in the background would see no
  # Ctrl-C at all.
  signal.signal(signal.SIGINT, signal.default_int_handler)
  sys.path.insert(0, ROOT)
  os.chdir(ROOT)
  arm(point, signum)
  if command[0] == "-m":
    # As `python -m`: sys.argv[0] is '-m' while the command's packages are imported.
    sys.argv = ["-m", *command[2:]]
    runpy.run_module(command[1], run_name="__main__", alter_sys=True)
  else:
    sys.argv = command
    runpy.run_path(os.path.join(ROOT, command[0]), run_name="__main__")


if __name__ == "__main__":
  main()
