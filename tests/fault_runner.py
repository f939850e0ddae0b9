"""Runs train.py or eval.py with one fault injected at a chosen moment, for test_faults.py.

  python tests/fault_runner.py FAULT train.py --config=... [flags]

FAULT is 'none' or one of FAULTS below. Each fault fires on the first call it targets
after training has passed step ``FAULT_AT_STEP`` (environment, default 0), inside the
code it names, so the test does not depend on timing. Each process of a multi-process
run is started by its own runner, with its own fault.
"""

from __future__ import annotations

import errno
import json
import os
import runpy
import signal
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from ccnet_jax import trainer
from ccnet_jax.evaluation import run as evaluation_run
from ccnet_jax.training import checkpointing

AT_STEP = int(os.environ.get("FAULT_AT_STEP", "0"))


def _signal_self(signum):
  if os.environ.get("FAULT_LOG"):  # When each fault fired, for the tests' timings.
    with open(os.environ["FAULT_LOG"], "a", encoding="utf-8") as log:
      print(
          json.dumps({"process": os.environ.get("JAX_PROCESS_ID"), "time": time.time()}), file=log
      )
  os.kill(os.getpid(), signum)


def _wrap(owner, name, before):
  """Replaces ``owner.name`` by a function that calls ``before(args)`` first (once)."""
  original = getattr(owner, name)
  fired = []

  def wrapper(*args, **kwargs):
    if not fired and before(args, kwargs):
      fired.append(True)
    return original(*args, **kwargs)

  setattr(owner, name, wrapper)


def _step_of_save(args, kwargs):
  return args[1] if len(args) > 1 else kwargs["step"]


def sigterm_in_evaluation():
  def before(args, kwargs):
    _signal_self(signal.SIGTERM)
    return True

  _wrap(evaluation_run.ModelEvaluation, "__call__", before)


def sigterm_in_export():
  def before(args, kwargs):
    _signal_self(signal.SIGTERM)
    return True

  _wrap(trainer, "save_model", before)


def sigterm_in_save():
  def before(args, kwargs):
    if _step_of_save(args, kwargs) <= AT_STEP:
      return False
    _signal_self(signal.SIGTERM)
    return True

  _wrap(checkpointing.RunCheckpoints, "save", before)


def kill_in_save():
  """SIGKILL once orbax has started writing the checkpoint, before it is committed."""
  import orbax.checkpoint as ocp

  original = ocp.CheckpointManager.save

  def save(self, step, *args, **kwargs):
    result = original(self, step, *args, **kwargs)
    if step > AT_STEP:
      _signal_self(signal.SIGKILL)
    return result

  ocp.CheckpointManager.save = save


def disk_full_in_save():
  """The checkpoint writer fails as on a full disk (ENOSPC)."""
  import orbax.checkpoint as ocp

  original = ocp.CheckpointManager.save

  def save(self, step, *args, **kwargs):
    if step > AT_STEP:
      path = os.path.join(str(self.directory), str(step))
      raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)
    return original(self, step, *args, **kwargs)

  ocp.CheckpointManager.save = save


def _at_step(signum):
  """Sends ``signum`` to this process when the loop has finished step AT_STEP + 1 (or later).

  The signal comes after the step's checks and before its end: before the processes of a
  multi-process run agree on whether to stop.
  """

  def before(args, kwargs):
    if args[1] <= AT_STEP:  # Run.check_finite(self, step, scalars)
      return False
    _signal_self(signum)
    return True

  _wrap(trainer.Run, "check_finite", before)


FAULTS = {
    "none": lambda: None,
    "sigterm_in_evaluation": sigterm_in_evaluation,
    "sigterm_in_export": sigterm_in_export,
    "sigterm_in_save": sigterm_in_save,
    "kill_in_save": kill_in_save,
    "disk_full_in_save": disk_full_in_save,
    "sigterm_at_step": lambda: _at_step(signal.SIGTERM),
    "kill_at_step": lambda: _at_step(signal.SIGKILL),
}


if __name__ == "__main__":
  fault, script, *flags = sys.argv[1:]
  FAULTS[fault]()
  sys.argv = [script, *flags]
  runpy.run_path(os.path.join(ROOT, script), run_name="__main__")
