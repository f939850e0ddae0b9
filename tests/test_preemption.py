"""Preemption and a lost process in a two-process run of train.py (jax.distributed on CPU).

Every run starts train.py twice, as a launcher would (``JAX_NUM_PROCESSES=2``, one CPU
device per process), each through tests/fault_runner.py with its own fault at a fixed
step: a process sends itself the signal from inside the loop, so nothing races a clock.
One workdir goes through a chain of runs, each resuming where the one before stopped:

  A. SIGTERM to process 0 only, at step 1;
  B. SIGTERM to process 1 only, at step 2;
  C. SIGTERM to both at different moments: process 0 at step 3, process 1 later, while
     the agreed checkpoint is being written;
  D. kill -9 of process 1 at step 5 (the last checkpoint is step 4);
  F. the run to its end.

The stops must save one step on both processes and exit 0; a lost process must end the
other with one line naming it; the losses logged across the chain, each step once, must be
those of the uninterrupted run. Each run is checked as it ends, in one test so that
pytest-xdist never runs the chain twice. ``pytest -s`` prints the time from each signal to
each exit (docs/multi_host.md quotes it). The loss of
process 0 (the coordinator), which ends the others at once rather than after the heartbeat
timeout, is checked on the runtime's recorded report in test_training_lost_process.py: every
run here costs about a minute of CPU.
"""

from __future__ import annotations

import json
import os
import re
import resource
import signal
import subprocess
import sys
import time

import pytest

from ccnet_jax.training.preemption import StopRequest
from tests import distributed_worker, tiny_run

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HEARTBEAT_SECONDS = 10
TOTAL_STEPS = 6
# The tiny run, with a smaller model, six steps and a short heartbeat timeout.
FLAGS = tiny_run.flags(
    model__backbone__base_width=8,
    model__head__channels=16,
    model__head__out_channels=16,
    model__aux__channels=16,
    eval__batch_size=2,
    train__total_steps=TOTAL_STEPS,
    train__heartbeat_timeout_seconds=HEARTBEAT_SECONDS,
)
RUN_TIMEOUT = 1200  # Seconds for one run; they took up to 8 minutes at a load average of 40.


# The tiny run's environment: one CPU device per process, a compilation cache shared by all runs.
environment = tiny_run.environment


@pytest.fixture(scope="module")
def fast_compile(environment):
  """Process 1 compiles its programs in every run (JAX lets only process 0 write the cache)."""
  return dict(environment, XLA_FLAGS="--xla_backend_optimization_level=0")


def run_two_processes(environment, workdir, faults, fault_log):
  """train.py on two processes, each with its fault; what each printed, and when it ended."""
  port = distributed_worker.free_port()
  processes = []
  for process_id, (fault, at_step) in enumerate(faults):
    env = dict(
        environment,
        JAX_COORDINATOR_ADDRESS=f"localhost:{port}",
        JAX_NUM_PROCESSES="2",
        JAX_PROCESS_ID=str(process_id),
        FAULT_AT_STEP=str(at_step),
        FAULT_LOG=str(fault_log),
    )
    command = [sys.executable, os.path.join(ROOT, "tests", "fault_runner.py"), fault, "train.py"]
    processes.append(
        subprocess.Popen(
            command + FLAGS + [f"--workdir={workdir}"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
    )
  try:
    ended = [None, None]
    deadline = time.time() + RUN_TIMEOUT
    while None in ended:
      assert time.time() < deadline, f"{workdir}: a process did not end"
      for i, process in enumerate(processes):
        if ended[i] is None and process.poll() is not None:
          ended[i] = time.time()
      time.sleep(0.1)
    outputs = [process.communicate(timeout=60) for process in processes]
  finally:
    for process in processes:
      if process.poll() is None:
        process.kill()
        process.communicate()
  return {
      "returncodes": [process.returncode for process in processes],
      "stdout": [out for out, _ in outputs],
      "stderr": [err for _, err in outputs],
      "ended": ended,
  }


def signal_times(fault_log):
  """{process: time} of the faults fired during a run (fault_runner's FAULT_LOG)."""
  if not os.path.exists(fault_log):
    return {}
  with open(fault_log, encoding="utf-8") as f:
    return {int(r["process"]): r["time"] for r in map(json.loads, f)}


def assert_clean(result, process):
  stderr = result["stderr"][process]
  assert result["returncodes"][process] == 0, stderr
  assert "Traceback" not in stderr and "error:" not in stderr, stderr


def assert_stopped_at(result, step, message):
  for process in (0, 1):
    assert_clean(result, process)
  assert message in result["stdout"][0], result["stdout"][0]
  assert f"saved the checkpoint of step {step}" in result["stdout"][0]


def assert_resumed_from(result, step, reference):
  assert f"Resuming from the checkpoint of step {step} " in result["stdout"][0]
  logged = result["logged"]
  assert logged == {s: reference["logged"][s] for s in logged}, (logged, reference["logged"])


def check_reference(runs):
  reference = runs["reference"]
  for process in (0, 1):
    assert_clean(reference, process)
  assert sorted(reference["logged"]) == list(range(1, TOTAL_STEPS + 1))
  assert "mIoU" in reference["stdout"][0]


def check_sigterm_to_process_0_only(runs):
  result = runs["A"]
  assert_stopped_at(result, 1, "Received SIGTERM on process 0 of 2: all 2 processes")
  assert result["saved"] == [1]
  assert result["logged"] == {1: runs["reference"]["logged"][1]}


def check_sigterm_to_process_1_only(runs):
  result = runs["B"]
  assert_stopped_at(result, 2, "Received SIGTERM on process 1 of 2: all 2 processes")
  assert_resumed_from(result, 1, runs["reference"])
  assert result["saved"] == [1, 2]


def check_sigterm_to_both_at_different_moments(runs):
  result = runs["C"]
  assert sorted(result["signalled"]) == [0, 1]
  # Process 1's signal came while the step that process 0's signal stopped was being saved.
  assert_stopped_at(result, 3, "Received SIGTERM on process 0 of 2: all 2 processes")
  assert_resumed_from(result, 2, runs["reference"])
  assert result["saved"] == [1, 2, 3]


def one_line(stderr):
  lines = [line for line in stderr.splitlines() if line.strip()]
  assert len(lines) == 1, stderr
  return lines[0]


def check_kill_of_process_1(runs):
  result = runs["D"]
  assert result["returncodes"][1] == -signal.SIGKILL
  # JAX's runtime ends the survivor (SIGABRT) once process 1 misses its heartbeats.
  assert result["returncodes"][0] == -signal.SIGABRT, result["stderr"][0]
  line = one_line(result["stderr"][0])
  assert re.fullmatch(
      rf"error: process 1 sent no heartbeat for {HEARTBEAT_SECONDS} s \(killed, crashed or its"
      r" host went down\), so this process stopped too; run the same command on every process"
      r" again to resume from the last complete checkpoint\.",
      line,
  ), line
  assert_resumed_from(result, 3, runs["reference"])
  assert result["saved"] == [2, 3, 4]


def check_the_end_of_the_chain(runs):
  result = runs["F"]
  for process in (0, 1):
    assert_clean(result, process)
  assert_resumed_from(result, 4, runs["reference"])
  # Step 5, logged by the run that lost a process after its last checkpoint, is logged once.
  assert result["logged"] == runs["reference"]["logged"]
  assert result["saved"] == [3, 4, 6]


# The chain: name -> the (fault, FAULT_AT_STEP) of process 0 and of process 1, and the check
# of what the run left.
CHAIN = {
    "A": ([("sigterm_at_step", 0), ("none", 0)], check_sigterm_to_process_0_only),
    "B": ([("none", 0), ("sigterm_at_step", 1)], check_sigterm_to_process_1_only),
    "C": (
        [("sigterm_at_step", 2), ("sigterm_in_save", 2)],
        check_sigterm_to_both_at_different_moments,
    ),
    "D": ([("none", 0), ("kill_at_step", 4)], check_kill_of_process_1),
    "F": ([("none", 0), ("none", 0)], check_the_end_of_the_chain),
}


def print_delays(name, result):
  for process, signalled in sorted(result["signalled"].items()):
    delays = ", ".join(
        f"process {i} {ended - signalled:.1f} s" for i, ended in enumerate(result["ended"])
    )
    print(f"run {name}: from the signal to process {process} to the exits: {delays}")


def test_stops_and_a_lost_process_resume_to_the_losses_of_the_uninterrupted_run(
    fast_compile, tmp_path
):
  """The uninterrupted run, then the chain A..D, F on one workdir, each run checked as it ends."""
  before = resource.getrusage(resource.RUSAGE_CHILDREN)
  reference = tmp_path / "reference"
  runs = {
      "reference": run_two_processes(fast_compile, reference, [("none", 0)] * 2, tmp_path / "none")
  }
  runs["reference"]["logged"] = tiny_run.logged_losses(reference)
  check_reference(runs)
  workdir = tmp_path / "chain"
  for name, (faults, check) in CHAIN.items():
    fault_log = tmp_path / f"faults_{name}.jsonl"
    result = run_two_processes(fast_compile, workdir, faults, fault_log)
    result.update(
        logged=tiny_run.logged_losses(workdir),
        saved=tiny_run.saved_steps(workdir),
        signalled=signal_times(fault_log),
    )
    runs[name] = result
    print_delays(name, result)
    check(runs)
  after = resource.getrusage(resource.RUSAGE_CHILDREN)
  cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
  load = ", ".join(f"{x:.0f}" for x in os.getloadavg())
  print(f"{len(runs)} two-process runs, {cpu:.0f} s of CPU in all; load average {load}.")


def test_one_process_agrees_with_itself_without_a_collective():
  with StopRequest() as stop:
    assert stop.agree() == {}
    signal.raise_signal(signal.SIGTERM)
    assert stop.agree() == {0: "SIGTERM"}
