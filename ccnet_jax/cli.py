"""What the entry points share: user errors become one line on stderr, not a traceback."""

from __future__ import annotations

import os
import sys
from typing import Callable

from ccnet_jax.training.trainer import TrainingDiverged

# Raised for what the user can fix: a missing dataset, a bad config value, a corrupt file.
USER_ERRORS = (FileNotFoundError, NotADirectoryError, ValueError, TrainingDiverged)


def run_user_command(command: Callable[[], object]) -> None:
  """Runs ``command``; exits with status 1 and the error's message on a user error.

  ``CCNET_JAX_TRACEBACK=1`` in the environment shows the full traceback instead.
  """
  try:
    command()
  except USER_ERRORS as error:
    if os.environ.get("CCNET_JAX_TRACEBACK"):
      raise
    print(f"error: {error}", file=sys.stderr, flush=True)
    sys.exit(1)
