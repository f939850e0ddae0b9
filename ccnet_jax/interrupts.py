"""How a command ends on Ctrl-C (SIGINT), SIGTERM or SIGHUP: at once, in one line, status 130.

The handler deletes the temporaries of the outputs being written (``ccnet_jax.atomic``), prints
``error: interrupted (SIGINT); ...`` and ends the process with ``os._exit(130)``. It raises no
Python exception: one raised inside a finaliser or a library callback is swallowed (the command
then goes on), one raised during an import prints a traceback. And it skips the interpreter's
teardown, which, while XLA's and TensorFlow's native threads still run (start-up, compiling,
converting), can crash the process (exit -11).

Commands install it from their first line (``train.py``, ``eval.py``, ``predict.py``; the
``python -m ccnet_jax.COMMAND`` programs from the package's ``__init__``), so the start-up
imports are covered, and ``cli.run`` states the command's own message and cleanup. A signal
that the parent process ignores (``nohup``, a background job) stays ignored. Code that wants a
signal for itself (the trainer's preemption, the explorer's server) installs its own handler
for as long as it needs it.

Only this module's functions touch the handlers; it imports nothing of the project, so an
entry point can install it before anything heavy is imported.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from typing import Callable, Iterator

SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
EXIT_STATUS = 130  # 128 + SIGINT, what shells report for Ctrl-C.
DEFAULT_MESSAGE = "nothing half-written was left behind; run the command again."

_message = DEFAULT_MESSAGE
_cleanup: Callable[[], object] | None = None


def _flush() -> None:
  for stream in (sys.stdout, sys.stderr):
    with contextlib.suppress(Exception):  # The stream may be mid-write in the interrupted code.
      stream.flush()


def _handle(signum: int, frame) -> None:
  del frame
  try:
    if _cleanup is not None:
      _cleanup()
  finally:
    _flush()
    line = f"error: interrupted ({signal.Signals(signum).name}); {_message}\n"
    os.write(2, line.encode("utf-8", "replace"))
    os._exit(EXIT_STATUS)  # pylint: disable=protected-access


def install(message: str = DEFAULT_MESSAGE, cleanup: Callable[[], object] | None = None) -> dict:
  """Makes SIGINT, SIGTERM and SIGHUP end the process as the module docstring says; returns
  the handlers it replaced (for :func:`restore`). ``message`` follows ``interrupted (SIG...);``
  and ``cleanup`` runs first. Only the main thread can install handlers; elsewhere it does
  nothing."""
  global _message, _cleanup
  _message, _cleanup = message, cleanup
  previous = {}
  if threading.current_thread() is threading.main_thread():
    for signum in SIGNALS:
      current = signal.getsignal(signum)
      if current is signal.SIG_IGN:  # Ignored by the parent (nohup, a background job).
        continue
      previous[signum] = signal.signal(signum, _handle)
  return previous


def restore(previous: dict) -> None:
  """Puts back the handlers :func:`install` replaced."""
  for signum, handler in previous.items():
    signal.signal(signum, handler if handler is not None else signal.SIG_DFL)


@contextlib.contextmanager
def handled(message: str, cleanup: Callable[[], object] | None = None) -> Iterator[None]:
  """:func:`install` for the block; the previous handlers (and message) come back after it."""
  saved = (_message, _cleanup)
  previous = install(message, cleanup)
  try:
    yield
  finally:
    restore(previous)
    _set(*saved)


def _set(message: str, cleanup: Callable[[], object] | None) -> None:
  global _message, _cleanup
  _message, _cleanup = message, cleanup


@contextlib.contextmanager
def as_keyboard_interrupt() -> Iterator[None]:
  """For the block, the signals raise KeyboardInterrupt (Python's Ctrl-C), for code that stops
  on them by itself: a server that finishes its requests, then re-raises the signal."""
  previous = {}
  for signum in SIGNALS:
    if signal.getsignal(signum) is not signal.SIG_IGN:
      previous[signum] = signal.signal(signum, signal.default_int_handler)
  try:
    yield
  finally:
    restore(previous)
