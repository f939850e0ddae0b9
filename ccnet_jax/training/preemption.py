"""Turn SIGTERM (how clusters and TPU VMs announce preemption) into a clean stop request.

On several hosts the signal reaches the processes at different times, or only some of
them. A process that stopped on its own after step N would leave the others waiting in
the first collective of step N+1, so the processes decide together: at the same point of
every step each process contributes the signal it has received (or none), one
all-gather hands every process the same list, and they all stop at that step.
"""

from __future__ import annotations

import signal
import threading

import jax
import numpy as np
from jax.experimental import multihost_utils


class StopRequest:
  """A flag set by SIGTERM/SIGINT while active; the loop asks :meth:`agree` after each step.

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

  def agree(self) -> dict[int, str]:
    """The processes that have received a stop signal (index -> signal name), as all see it.

    With several processes this is a collective (an all-gather): every process calls it at
    the same point of the loop, and all get the same answer. With one it reads the flag.
    """
    received = signal.Signals[self.signal_name].value if self else 0
    if jax.process_count() == 1:
      codes = [received]
    else:
      codes = multihost_utils.process_allgather(np.int32(received)).tolist()
    return {process: signal.Signals(code).name for process, code in enumerate(codes) if code}

  def _handle(self, signum, frame):
    del frame
    if self.signal_name is not None:
      self.restore()
      signal.raise_signal(signum)
      return
    self.signal_name = signal.Signals(signum).name

  def install(self) -> "StopRequest":
    """Catches the signals from now on (see :meth:`restore`)."""
    if threading.current_thread() is threading.main_thread():
      for sig in self.SIGNALS:
        self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def __enter__(self) -> "StopRequest":
    return self.install()

  def __exit__(self, *exc) -> None:
    self.restore()

  def restore(self) -> None:
    """Gives the signals back to the handlers they had before :meth:`install`."""
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
    self._previous.clear()
