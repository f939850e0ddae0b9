"""One ``error:`` line, naming the lost process, when a process of a multi-process run dies.

When a process of a ``jax.distributed`` job dies (killed, crashed, its host gone), JAX's
distributed runtime ends every other process: the coordinator (process 0) declares a
process lost once it has sent no heartbeat for ``heartbeat_timeout_seconds``, and when the
coordinator itself disappears the others learn it at once. The runtime then aborts each
process from one of its C++ threads, after a multi-line log record and a stack trace, and
no Python code runs after that. So a multi-process run passes its standard error through
a small relay process (:func:`start`, before ``jax.distributed.initialize``): the relay
forwards every line, holds back the runtime's own log records, and when the runtime's
fatal record comes it prints one line in their place.

The relay runs this file as a script, so it imports only the standard library.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from typing import Callable, Iterable

# A C++ log record's first line: 'E1207 17:22:40.590964   11933 coordination_service.cc:1549] '.
_RECORD = re.compile(r"^([IWEF])\d{4} [\d:.]+ +\d+ ([\w.]+):\d+\] ")
# The sources of JAX's distributed runtime: the coordination service, its client, the
# preemption notifier. Their records are about the job's processes, not about this one.
_RUNTIME_SOURCES = re.compile(
    r"^(coordination_service\w*|preemption_\w+|client|service|distributed_runtime\w*)\.(cc|h)$"
)
_FATAL_REPORT = "Terminating process because the JAX distributed service detected fatal errors"
_UNHEALTHY = re.compile(r"unhealthy \(stopped sending heartbeats\):\n(.*?)\nThe tasks", re.S)
_COORDINATOR_GONE = "Failed to send RPC to coordination service"
_RESUME = "run the same command on every process again to resume from the last complete checkpoint"


def lost_processes(report: str) -> list[int] | None:
  """The processes that the runtime's fatal ``report`` declares lost; None if it names none."""
  unhealthy = _UNHEALTHY.search(report)
  if unhealthy:
    return sorted({int(task) for task in re.findall(r"\d+", unhealthy.group(1))})
  if _COORDINATOR_GONE in report:
    return [0]
  return None


def describe(report: str, heartbeat_timeout_seconds: int) -> str:
  """The one line that replaces the runtime's fatal ``report``."""
  lost = lost_processes(report)
  if lost == [0] and _UNHEALTHY.search(report) is None:
    what = "process 0 (the coordinator) was lost"
  elif lost:
    names = ", ".join(map(str, lost))
    what = (
        f"process{'es' if len(lost) > 1 else ''} {names} sent no heartbeat for"
        f" {heartbeat_timeout_seconds} s"
    )
  else:
    status = report.split("absl::Status: ", 1)[-1].strip().splitlines()[0]
    return f"error: JAX's distributed runtime stopped this process ({status}); {_RESUME}."
  return (
      f"error: {what} (killed, crashed or its host went down), so this process stopped too;"
      f" {_RESUME}."
  )


def relay(lines: Iterable[str], write: Callable[[str], None], heartbeat_timeout_seconds: int):
  """Forwards ``lines`` to ``write``; the runtime's fatal report becomes one line.

  The runtime's other records are held back until a line of another kind comes, then
  forwarded: those that only lead up to the fatal report are dropped with it. What
  follows the report (its stack trace) is dropped.
  """
  held: list[str] = []
  report: list[str] | None = None
  for line in lines:
    if report is not None:
      report.append(line)
      continue
    record = _RECORD.match(line)
    if record and _FATAL_REPORT in line:
      report = [line]
    elif (record and _RUNTIME_SOURCES.match(record.group(2))) or (held and not record):
      held.append(line)  # A runtime record, or a continuation line of one.
    else:
      for kept in held + [line]:
        write(kept)
      held = []
  if report is not None:
    text = "".join(report).split("*** Check failure stack trace", 1)[0]
    write(describe(text, heartbeat_timeout_seconds) + "\n")
  else:
    for kept in held:
      write(kept)


def start(heartbeat_timeout_seconds: int) -> subprocess.Popen:
  """Sends this process's standard error through a relay process from now on."""
  process = subprocess.Popen(
      [sys.executable, os.path.abspath(__file__), str(heartbeat_timeout_seconds)],
      stdin=subprocess.PIPE,
      stdout=subprocess.DEVNULL,
      start_new_session=True,  # Ctrl-C and a scheduler's signals are meant for the trainer.
  )
  sys.stderr.flush()
  os.dup2(process.stdin.fileno(), sys.stderr.fileno())
  process.stdin.close()  # The trainer's standard error is now the relay's only input.
  return process


def await_report(heartbeat_timeout_seconds: int) -> None:
  """Gives JAX's runtime the time to report a lost process before a failure is raised.

  A collective whose peer died fails at once on CPU (gloo), before the runtime has
  declared the peer lost; the runtime's report, which ends this process, names it.
  If none comes, the failure was not a lost process and the caller raises it.
  """
  time.sleep(2 * heartbeat_timeout_seconds)


def _main() -> None:
  for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
    signal.signal(signum, signal.SIG_IGN)  # Ends when the trainer's standard error closes.
  source = (raw.decode("utf-8", "replace") for raw in sys.stdin.buffer)

  def write(text: str) -> None:
    sys.stderr.write(text)
    sys.stderr.flush()

  relay(source, write, int(sys.argv[1]))


if __name__ == "__main__":
  _main()
