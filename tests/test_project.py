"""The project's promises about itself: README's commands are the ones CI runs."""

import pathlib
import re

from tests import processes

ROOT = pathlib.Path(processes.ROOT)


def _readme_block_after(heading: str) -> str:
  text = (ROOT / "README.md").read_text()
  match = re.search(rf"^## {heading}\n+```bash\n(.+?)\n```", text, re.M | re.S)
  assert match, f"README.md has no bash block under '## {heading}'"
  return match.group(1).strip()


def test_ci_runs_exactly_the_readme_test_command():
  ci_lines = (ROOT / ".ci" / "run").read_text().strip().splitlines()
  assert ci_lines[-1].strip() == _readme_block_after("Test")


def test_readme_and_ci_install_with_one_script():
  assert _readme_block_after("Install") == "./install.sh"
  assert "./install.sh" in (ROOT / ".ci" / "run").read_text().splitlines()


def test_install_script_installs_every_requirements_file():
  installed = re.findall(r"-r (\S+)", (ROOT / "install.sh").read_text())
  assert sorted(installed) == sorted(p.name for p in ROOT.glob("requirements*.txt"))


def test_optional_sets_install_as_their_errors_say():
  """The command a missing-library error names is the one install.sh runs."""
  from ccnet_jax.aot.libraries import INSTALL
  from ccnet_jax.export.onnx import INSTALL_COMMAND

  lines = (ROOT / "install.sh").read_text().splitlines()
  for command in (INSTALL, INSTALL_COMMAND):
    assert command.replace("pip install ", "pip install -q ") in lines, command
