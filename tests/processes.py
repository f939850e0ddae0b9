"""The project's scripts in a fresh Python process, run from the repository root as a user would."""

from __future__ import annotations

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Seconds after which a subprocess counts as hung. Never a measure of speed: on a loaded
# 2-core machine the scripts run ten times slower than on a quiet one, and a test's outcome
# must not depend on that.
HANG_TIMEOUT = 3600


def run_python(
    *args, env: dict | None = None, one_device: bool = False, timeout: float = HANG_TIMEOUT
) -> subprocess.CompletedProcess:
  """``python *args`` with this checkout first on the path; output captured as text.

  ``one_device`` drops the test session's XLA_FLAGS (eight simulated host devices), for runs
  whose memory or compiled programs are measured on the single device a user has.
  """
  environment = dict(os.environ if env is None else env, PYTHONPATH=ROOT)
  if one_device:
    environment.pop("XLA_FLAGS", None)
  return subprocess.run(
      [sys.executable, *map(str, args)],
      cwd=ROOT,
      env=environment,
      capture_output=True,
      text=True,
      timeout=timeout,
      check=False,
  )
