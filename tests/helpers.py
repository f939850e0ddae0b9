"""What several test modules share: running a command's ``main`` as its script would."""

from __future__ import annotations

import pytest

from ccnet_jax import cli


def run_command(main, *arguments) -> int:
  """Runs ``main`` through ``cli.run`` in this process, as ``python -m ...`` would; its exit status."""
  with pytest.raises(SystemExit) as exit_info:
    cli.run(main, ["command", *map(str, arguments)])
  return exit_info.value.code or 0
