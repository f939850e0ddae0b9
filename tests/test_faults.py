"""Faults lose no completed step and show no traceback: train.py and eval.py as a user runs them.

Each test runs an entry point in a subprocess on a tiny synthetic config, with one fault
injected at a fixed point of the run by tests/fault_runner.py (a signal inside the
evaluation, the export or a checkpoint save; SIGKILL during a save; a full disk) or made on
disk (damaged checkpoints, an unwritable workdir, a second run, a changed config). Each
checks the exit status, that stderr holds no traceback and names the file or field in one
``error:`` line, and that the checkpoint of every completed step before the fault survives.
The reference run (:func:`reference`) is the uninterrupted run the resumed ones must match.
Subprocesses share a JAX compilation cache, so one tiny program is compiled once.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from ccnet_jax.errors import UserError
from ccnet_jax.trainer import check_config, initial_model
from ccnet_jax.training import workdir as workdir_lib
from ccnet_jax.training.checkpointing import SKIPPED_DIR, RunCheckpoints
from ccnet_jax.training.optim import make_optimizer
from ccnet_jax.training.preemption import StopRequest
from ccnet_jax.training.state import create_train_state
from tests import tiny_run
from tests.processes import HANG_TIMEOUT, ROOT, run_python
from tests.tiny_run import flags, logged_losses, saved_steps, tiny_config

# The tiny run's subprocess environment, a module fixture.
environment = tiny_run.environment


def start(environment, script, *args, fault="none", at_step=0, cwd=ROOT):
  env = dict(environment, FAULT_AT_STEP=str(at_step))
  return subprocess.Popen(
      [sys.executable, os.path.join(ROOT, "tests", "fault_runner.py"), fault, script, *args],
      cwd=cwd,
      env=env,
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
  )


def run(environment, script, *args, timeout=HANG_TIMEOUT, **kwargs):
  process = start(environment, script, *args, **kwargs)
  stdout, stderr = process.communicate(timeout=timeout)
  return process.returncode, stdout, stderr


# A Python library's log record (absl format), e.g. orbax's 'E1126 03:57:03.9 ... file.py:73]'.
LIBRARY_LOG = re.compile(r"^[EWF]\d{4} [\d:.]+ +\d+ [\w.]+\.py:\d+\]")


def assert_one_error_line(returncode, stderr, *names):
  """Exit status 1; stderr ends with the only ``error:`` line, naming each of ``names``.

  Nothing a Python library logs comes before it (XLA's own compiler notices may).
  """
  assert returncode == 1, stderr
  assert "Traceback" not in stderr, stderr
  lines = [line for line in stderr.splitlines() if line.strip()]
  errors = [line for line in lines if line.startswith("error: ")]
  assert len(errors) == 1 and lines[-1] == errors[0], stderr
  assert not any(LIBRARY_LOG.match(line) for line in lines), stderr
  for name in names:
    assert str(name) in errors[0], (name, errors[0])


def assert_clean_exit(returncode, stderr):
  assert returncode == 0, stderr
  assert "Traceback" not in stderr and "error:" not in stderr, stderr


def restorable_step(workdir, messages=None):
  """The step of the newest checkpoint in ``workdir`` that restores into the tiny state."""
  config = tiny_config()
  tx, _ = make_optimizer(config.optim, config.train.total_steps)
  _, state = create_train_state(initial_model(config), tx, seed=config.train.seed)
  checkpoints = RunCheckpoints(os.path.join(workdir, "checkpoints"), keep=3)
  try:
    report = messages.append if messages is not None else print
    return checkpoints.restore_newest(state, report=report)[2]
  finally:
    checkpoints.close()


@pytest.fixture(scope="module")
def reference(environment, tmp_path_factory):
  """The uninterrupted run, started as written with no --workdir: runs/synthetic/ in its cwd."""
  cwd = tmp_path_factory.mktemp("reference")
  returncode, stdout, stderr = run(environment, "train.py", *flags(), cwd=cwd)
  assert_clean_exit(returncode, stderr)
  workdir = os.path.join(cwd, "runs", "synthetic")
  assert "Workdir: runs/synthetic" in stdout and "mIoU" in stdout
  assert saved_steps(workdir) == [2, 4]
  return workdir


def test_sigterm_during_evaluation_saves_the_step_and_zero_means_never(environment, tmp_path):
  # Evaluation every 2 steps, no periodic checkpoints or logs: the preempted step must be saved.
  args = flags(train__eval_every=2, train__checkpoint_every=0, train__log_every=0)
  returncode, stdout, stderr = run(
      environment, "train.py", *args, f"--workdir={tmp_path}", fault="sigterm_in_evaluation"
  )
  assert_clean_exit(returncode, stderr)
  assert "Received SIGTERM: saved the checkpoint of step 2" in stdout
  assert saved_steps(tmp_path) == [2] and restorable_step(tmp_path) == 2
  assert logged_losses(tmp_path) == {}  # log_every=0: no step logged before the last.


def test_sigterm_during_export_saves_the_step_and_a_whole_model(environment, tmp_path):
  returncode, stdout, stderr = run(
      environment,
      "train.py",
      *flags(train__eval_every=2),
      f"--workdir={tmp_path}",
      fault="sigterm_in_export",
  )
  assert_clean_exit(returncode, stderr)
  assert "Received SIGTERM: saved the checkpoint of step 2" in stdout
  assert saved_steps(tmp_path) == [2] and restorable_step(tmp_path) == 2
  assert sorted(os.listdir(tmp_path / "best")) == ["metrics.json", "model.json", "params"]


def test_sigterm_during_a_save_completes_it(environment, tmp_path):
  returncode, stdout, stderr = run(
      environment, "train.py", *flags(), f"--workdir={tmp_path}", fault="sigterm_in_save"
  )
  assert_clean_exit(returncode, stderr)
  assert "Received SIGTERM: saved the checkpoint of step 2" in stdout
  assert saved_steps(tmp_path) == [2] and restorable_step(tmp_path) == 2


def test_kill_during_a_save_resumes_from_the_last_complete_checkpoint(
    environment, reference, tmp_path
):
  returncode, _, stderr = run(
      environment, "train.py", *flags(), f"--workdir={tmp_path}", fault="kill_in_save", at_step=2
  )
  assert returncode == -signal.SIGKILL, stderr
  assert restorable_step(tmp_path) in (2, 4)  # 4 only if orbax committed before the kill.

  returncode, stdout, stderr = run(environment, "train.py", *flags(), f"--workdir={tmp_path}")
  assert_clean_exit(returncode, stderr)
  assert "Resuming from the checkpoint of step" in stdout
  # Steps logged before the kill and after the resume, each once, equal the reference's.
  assert logged_losses(tmp_path) == logged_losses(reference)


def test_full_disk_is_one_line_and_keeps_the_last_checkpoint(environment, tmp_path):
  returncode, _, stderr = run(
      environment,
      "train.py",
      *flags(),
      f"--workdir={tmp_path}",
      fault="disk_full_in_save",
      at_step=2,
  )
  assert_one_error_line(
      returncode,
      stderr,
      tmp_path / "checkpoints",
      "step 4",
      "No space left on device",
      "step 2 is intact",
  )
  assert saved_steps(tmp_path) == [2] and restorable_step(tmp_path) == 2


def _truncate_a_chunk(step_dir):
  chunks = [
      os.path.join(d, n)
      for d, _, names in os.walk(os.path.join(step_dir, "state"))
      for n in names
      if os.sep + "d" + os.sep in os.path.join(d, n)
  ]
  assert chunks, os.listdir(step_dir)
  for chunk in chunks:
    with open(chunk, "r+b") as f:
      f.truncate(os.path.getsize(chunk) // 2)


def _empty(step_dir, name):
  paths = [os.path.join(d, name) for d, _, names in os.walk(step_dir) if name in names]
  assert paths, name
  for path in paths:
    open(path, "w").close()


def _garbage_data_position(step_dir):
  paths = [
      os.path.join(d, n) for d, _, names in os.walk(os.path.join(step_dir, "data")) for n in names
  ]
  assert paths
  for path in paths:
    with open(path, "w") as f:
      f.write("{not json")


CORRUPTIONS = {
    "truncated array chunk": _truncate_a_chunk,
    "emptied manifest.ocdbt": lambda step_dir: _empty(step_dir, "manifest.ocdbt"),
    "deleted state/": lambda step_dir: shutil.rmtree(os.path.join(step_dir, "state")),
    "deleted _METADATA": lambda step_dir: [
        os.remove(os.path.join(d, "_METADATA"))
        for d, _, names in os.walk(step_dir)
        if "_METADATA" in names
    ],
    "garbage data position": _garbage_data_position,
}


@pytest.mark.parametrize("corruption", sorted(CORRUPTIONS))
def test_a_damaged_latest_checkpoint_is_set_aside(reference, tmp_path, corruption):
  workdir = str(tmp_path / "run")
  shutil.copytree(reference, workdir)
  CORRUPTIONS[corruption](os.path.join(workdir, "checkpoints", "4"))
  messages = []
  assert restorable_step(workdir, messages) == 2
  assert len(messages) == 1 and "step 4" in messages[0] and SKIPPED_DIR in messages[0]
  assert saved_steps(workdir) == [2]
  assert os.path.isdir(os.path.join(workdir, SKIPPED_DIR, "4"))


def test_no_readable_checkpoint_is_one_error_naming_them(reference, tmp_path):
  workdir = str(tmp_path / "run")
  shutil.copytree(reference, workdir)
  for step in (2, 4):
    shutil.rmtree(os.path.join(workdir, "checkpoints", str(step), "state"))
  with pytest.raises(UserError, match="no checkpoint in .*checkpoints can be read.*step 4.*step 2"):
    restorable_step(workdir)
  assert saved_steps(workdir) == [2, 4]  # Nothing is moved when nothing restores.


def test_train_py_resumes_past_a_damaged_checkpoint(environment, reference, tmp_path):
  workdir = str(tmp_path / "run")
  shutil.copytree(reference, workdir)
  shutil.rmtree(os.path.join(workdir, "model"))
  _truncate_a_chunk(os.path.join(workdir, "checkpoints", "4"))
  returncode, stdout, stderr = run(environment, "train.py", *flags(), f"--workdir={workdir}")
  assert_clean_exit(returncode, stderr)
  assert "warning: the checkpoint of step 4 cannot be read" in stdout
  assert "Resuming from the checkpoint of step 2" in stdout
  # Steps 3 and 4 were logged by the first run and again after the resume: kept once each.
  assert logged_losses(workdir) == logged_losses(reference)
  assert os.path.isdir(os.path.join(workdir, "model"))


def test_an_unwritable_workdir_is_refused_first(environment, tmp_path):
  blocker = tmp_path / "a_file"
  blocker.write_text("")
  returncode, stdout, stderr = run(
      environment, "train.py", *flags(), f"--workdir={blocker / 'run'}"
  )
  assert_one_error_line(returncode, stderr, blocker / "run", "--workdir")


def test_a_read_only_file_in_the_workdir_is_named(tmp_path, monkeypatch):
  (tmp_path / "metrics.jsonl").write_text("")
  real_access = os.access
  monkeypatch.setattr(
      os,
      "access",
      lambda path, mode: (not str(path).endswith("metrics.jsonl") and real_access(path, mode)),
  )
  with pytest.raises(UserError, match=r"metrics\.jsonl is not writable"):
    workdir_lib.check_writable(str(tmp_path))


def _children(pid):
  """The child processes of ``pid``, whichever of its threads started them."""
  children = []
  for task in os.listdir(f"/proc/{pid}/task"):
    with open(f"/proc/{pid}/task/{task}/children", encoding="utf-8") as f:
      children += [int(child) for child in f.read().split()]
  return children


def _alive(pid):
  try:
    with open(f"/proc/{pid}/stat", encoding="utf-8") as f:
      return f.read().split(")")[-1].split()[0] != "Z"
  except FileNotFoundError:
    return False


def test_a_second_run_is_refused_and_workers_end_with_a_killed_run(environment, tmp_path):
  args = flags(train__total_steps=100_000, train__checkpoint_every=100_000, data__num_workers=1)
  first = start(environment, "train.py", *args, f"--workdir={tmp_path}")
  try:
    deadline = time.time() + HANG_TIMEOUT  # Start-up and compilation, however busy the machine.
    metrics = tmp_path / "metrics.jsonl"
    while not (metrics.exists() and len(metrics.read_text().splitlines()) >= 2):
      assert first.poll() is None, first.communicate()
      assert time.time() < deadline, "training did not start"
      time.sleep(0.5)
    returncode, _, stderr = run(environment, "train.py", *args, f"--workdir={tmp_path}")
    assert_one_error_line(returncode, stderr, tmp_path, f"pid {first.pid}")

    workers = _children(first.pid)
    assert workers, "no loader worker process"
    first.send_signal(signal.SIGKILL)
    first.communicate(timeout=HANG_TIMEOUT)
    # The workers look for their parent every second; the bound only stops a hang, far
    # above what a loaded machine needs.
    deadline = time.time() + 300
    while any(_alive(pid) for pid in workers) and time.time() < deadline:
      time.sleep(0.5)
    assert not any(_alive(pid) for pid in workers)
  finally:
    if first.poll() is None:
      first.kill()
      first.communicate()


@pytest.mark.parametrize("crop", [(0, 0), (-8, 8), (64,), (32.5, 32)])
def test_a_bad_crop_size_is_refused_up_front(crop):
  config = tiny_config()
  config.data.crop_size = crop
  with pytest.raises(ValueError, match=r"data\.crop_size=.* must be two positive integers"):
    check_config(config, num_devices=1)


def test_a_bad_crop_size_is_one_line(environment, tmp_path):
  returncode, _, stderr = run(
      environment, "train.py", *flags(), "--config.data.crop_size=64", f"--workdir={tmp_path}"
  )
  assert_one_error_line(returncode, stderr, "data.crop_size")
  assert not os.path.exists(tmp_path / "checkpoints")


def test_a_negative_interval_and_an_unknown_field_are_one_line(environment, tmp_path):
  returncode, _, stderr = run(
      environment, "train.py", *flags(train__log_every=-1), f"--workdir={tmp_path}"
  )
  assert_one_error_line(returncode, stderr, "train.log_every")
  returncode, _, stderr = run(
      environment, "train.py", *flags(), "--config.train.steps=40", f"--workdir={tmp_path}"
  )
  assert_one_error_line(returncode, stderr, "--config.train.steps", "total_steps", "log_every")


def test_another_config_on_a_run_names_the_fields(environment, reference, tmp_path):
  workdir = str(tmp_path / "run")
  shutil.copytree(reference, workdir)
  returncode, _, stderr = run(
      environment,
      "train.py",
      *flags(),
      f"--workdir={workdir}",
      "--config.model.head.out_channels=32",
      "--config.train.global_batch_size=4",
  )
  assert_one_error_line(
      returncode,
      stderr,
      "model.head.out_channels: 64 -> 32",
      "train.global_batch_size: 2 -> 4",
      "config.json",
  )
  returncode, _, stderr = run(
      environment, "eval.py", *flags(), f"--workdir={workdir}", "--config.model.head.recurrence=1"
  )
  assert_one_error_line(returncode, stderr, "model.head.recurrence: 2 -> 1")


def test_eval_on_a_mistyped_workdir_creates_nothing(environment, tmp_path):
  missing = tmp_path / "runz"
  returncode, _, stderr = run(environment, "eval.py", *flags(), f"--workdir={missing}")
  assert_one_error_line(returncode, stderr, missing)
  assert not missing.exists()


def test_eval_py_reads_the_default_workdir_without_an_optimizer(environment, reference):
  cwd = os.path.dirname(os.path.dirname(reference))
  # An optimiser the checkpoint was not trained with: evaluation does not build one.
  returncode, stdout, stderr = run(
      environment, "eval.py", *flags(), "--config.optim.name=sgd", cwd=cwd
  )
  assert_clean_exit(returncode, stderr)
  assert "Evaluated the checkpoint of step 4" in stdout
  with open(os.path.join(reference, "eval", "metrics.json"), encoding="utf-8") as f:
    evaluated = json.load(f)
  with open(os.path.join(reference, "best", "metrics.json"), encoding="utf-8") as f:
    best = json.load(f)
  np.testing.assert_allclose(evaluated["miou"], best["miou"], rtol=0, atol=1e-12)


class _Interrupted(Exception):
  pass


def _interrupt(signum, frame):
  del frame
  raise _Interrupted(signum)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_second_signal_is_not_deferred(signum):
  """The second signal reaches the handler that was there before, inside the call that
  raised it. That handler is the test's own: what a test process had installed before
  (which depends on the tests that ran in it) does not matter."""
  original = signal.signal(signum, _interrupt)
  try:
    with StopRequest() as stop:
      signal.raise_signal(signum)  # Python runs the handler before raise_signal returns.
      assert stop.signal_name == signal.Signals(signum).name
      with pytest.raises(_Interrupted):
        signal.raise_signal(signum)
      assert signal.getsignal(signum) is _interrupt
    assert signal.getsignal(signum) is _interrupt
  finally:
    signal.signal(signum, original)


def test_evaluation_and_the_cli_do_not_import_the_training_loop(environment):
  code = (
      "import sys, ccnet_jax.cli, ccnet_jax.evaluation.run;"
      " print('ccnet_jax.trainer' in sys.modules)"
  )
  result = run_python("-c", code, env=environment)
  assert result.returncode == 0, result.stderr
  assert result.stdout.strip() == "False", result


def test_only_closed_event_loop_errors_of_library_threads_are_dropped(monkeypatch):
  from ccnet_jax import cli  # pylint: disable=import-outside-toplevel

  printed = []
  monkeypatch.setattr(sys, "__unraisablehook__", printed.append)
  report = lambda error: type("Unraisable", (), {"exc_value": error})()
  cli._ignore_closed_event_loops(report(RuntimeError("Event loop is closed")))
  assert not printed
  other = report(RuntimeError("a real failure"))
  cli._ignore_closed_event_loops(other)
  assert printed == [other]
