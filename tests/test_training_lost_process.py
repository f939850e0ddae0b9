"""The relay that turns JAX's report of a lost process into one line, on the runtime's own text.

The reports below are what jax 0.10.2's distributed runtime wrote to standard error in a
two-process CPU job when process 1 was killed (seen by process 0) and when process 0, the
coordinator, was killed (seen by process 1). test_preemption.py checks the same on real runs.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from ccnet_jax.training import lost_process
from tests.processes import ROOT

STACK = """\
*** Check failure stack trace: ***
    @     0x7f6f4d240634  absl::lts_20260107::log_internal::LogMessage::SendToLog()
    @     0x7f6f4d2405b6  absl::lts_20260107::log_internal::LogMessage::Flush()
    @     0x7f6f548a71f5  (unknown)
"""
TERMINATING = (
    "client.h:80] Terminating process because the JAX distributed service detected fatal"
    " errors. This most likely indicates that another task died; see the other task logs for"
    " more details. Disable Python buffering, i.e. `python -u`, to be sure to see all the"
    " previous output. absl::Status: "
)
HEARTBEAT_LOST = (
    "E1207 17:54:57.418338   10304 coordination_service.cc:1549] [12652998853265927881] Use"
    " error polling to propagate the following error to all tasks: UNAVAILABLE: The following"
    " tasks are unhealthy (stopped sending heartbeats):\n"
    "1\n"
    "The tasks have crashed. Check the task logs for an earlier error, or scheduler events"
    " (e.g. preemption, eviction) to debug further."
    " [type.googleapis.com/tensorflow.CoordinationServiceError='']\n"
    "E1207 17:54:57.419013   10315 coordination_service_agent.cc:289] Polled an error from"
    " coordination service (this can be an error from this or another task).\n"
    f"F1207 17:54:57.419222   10315 {TERMINATING}UNAVAILABLE: The following tasks are unhealthy"
    " (stopped sending heartbeats):\n"
    "1\n"
    "The tasks have crashed. Check the task logs for an earlier error, or scheduler events"
    " (e.g. preemption, eviction) to debug further.\n"
    "\n"
    "RPC: /xla.coordination.CoordinationService/PollForError"
    " [type.googleapis.com/tensorflow.CoordinationServiceError='']\n" + STACK
)
COORDINATOR_LOST = (
    "E1207 17:25:30.270796   16361 coordination_service_agent.cc:289] Polled an error from"
    " coordination service (this can be an error from this or another task).\n"
    f"F1207 17:25:30.270802   16361 {TERMINATING}UNAVAILABLE: Failed to send RPC to"
    " coordination service. Either the leader task was preempted/died/restarted unexpectedly or"
    " this task is experiencing network issues. Check earlier logs from 1) this task, 2) the"
    " leader (usually slice 0 task 0), and 3) cluster scheduler to debug further.\n"
    "Additional GRPC error information from remote target coordination_service while calling"
    " /xla.coordination.CoordinationService/PollForError:\n"
    ':UNKNOWN:Error received from peer  {grpc_message:"Socket closed", grpc_status:14}\n' + STACK
)
OWN_LINES = "step 5/6 loss 3.1\nwarning: something of ours\n"
RESUME = (
    "(killed, crashed or its host went down), so this process stopped too; run the same command"
    " on every process again to resume from the last complete checkpoint.\n"
)


def relayed(text: str, heartbeat: int = 10) -> str:
  written = []
  lost_process.relay(text.splitlines(keepends=True), written.append, heartbeat)
  return "".join(written)


def test_a_lost_process_is_named_in_one_line_after_ours():
  assert relayed(OWN_LINES + HEARTBEAT_LOST, heartbeat=7) == (
      OWN_LINES + "error: process 1 sent no heartbeat for 7 s " + RESUME
  )


def test_a_lost_coordinator_is_named_in_one_line():
  assert relayed(OWN_LINES + COORDINATOR_LOST) == (
      OWN_LINES + "error: process 0 (the coordinator) was lost " + RESUME
  )


@pytest.mark.parametrize("tasks,named", [("2", "process 2 sent"), ("1\n3", "processes 1, 3 sent")])
def test_each_unhealthy_task_is_named(tasks, named):
  report = HEARTBEAT_LOST.replace("heartbeats):\n1\n", f"heartbeats):\n{tasks}\n")
  assert relayed(report).startswith(f"error: {named} no heartbeat for 10 s")


def test_an_unknown_runtime_failure_gives_its_status():
  report = f"F1207 17:25:30.270802   16361 {TERMINATING}INTERNAL: Shutdown barrier has failed.\n"
  assert relayed(report + STACK) == (
      "error: JAX's distributed runtime stopped this process (INTERNAL: Shutdown barrier has"
      " failed.); run the same command on every process again to resume from the last complete"
      " checkpoint.\n"
  )


def test_runtime_records_without_a_fatal_one_are_forwarded_in_order():
  warning = HEARTBEAT_LOST.split("F1207")[0]  # The two E records, without the fatal one.
  assert relayed(warning + OWN_LINES) == warning + OWN_LINES
  assert relayed(OWN_LINES + warning) == OWN_LINES + warning  # Kept until the end.


def test_other_fatal_records_are_forwarded_untouched():
  check = "F1207 17:25:30.270802   16361 hlo_instruction.cc:123] Check failed: x\n" + STACK
  assert relayed(OWN_LINES + check) == OWN_LINES + check


def test_the_relay_outlives_an_aborted_process_and_prints_one_line():
  code = textwrap.dedent(f"""
      import os, sys
      from ccnet_jax.training import lost_process
      lost_process.start(10)
      print("ours", file=sys.stderr, flush=True)
      os.write(2, {HEARTBEAT_LOST.encode()!r})
      os.abort()
      """)
  result = subprocess.run(
      [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
  )
  assert result.returncode == -6
  assert result.stderr == "ours\nerror: process 1 sent no heartbeat for 10 s " + RESUME
