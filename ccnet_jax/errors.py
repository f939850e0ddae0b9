"""Errors a user can fix; the entry points print their message as one line, no traceback.

This module imports nothing, so the command-line layer and the training loop can both
name these errors without one pulling in the other.
"""


class UserError(Exception):
  """A problem the user can fix; the message names the file or field and the fix."""


class TrainingDiverged(UserError):
  """The loss or the gradients stopped being finite."""
