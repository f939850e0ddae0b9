"""Turn SIGTERM (how clusters and TPU VMs announce preemption) into a clean stop request."""

from __future__ import annotations

import signal
import threading


class StopRequest:
  """A flag set by SIGTERM/SIGINT while active; the loop checks it between steps.

  The handler only sets the flag: checkpointing from inside a signal handler could
  interrupt a step half way. A second signal is not deferred: the previous handlers
  come back and the signal is delivered again (Ctrl-C twice interrupts an evaluation).
  Handlers are restored on exit, and nothing is installed outside the main thread
  (where Python forbids it).
  """

  SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __init__(self):
    self.signal_name: str | None = None
    self._previous = {}

  def __bool__(self) -> bool:
    return self.signal_name is not None

  def _handle(self, signum, frame):
    del frame
    if self.signal_name is not None:
      self._restore()
      signal.raise_signal(signum)
      return
    self.signal_name = signal.Signals(signum).name

  def __enter__(self) -> "StopRequest":
    if threading.current_thread() is threading.main_thread():
      for sig in self.SIGNALS:
        self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def __exit__(self, *exc) -> None:
    self._restore()

  def _restore(self) -> None:
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
    self._previous.clear()
