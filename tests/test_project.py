"""The project's promises about itself: README's commands are the ones CI runs."""

import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _readme_block_after(heading: str) -> str:
  text = (ROOT / "README.md").read_text()
  match = re.search(rf"^## {heading}\n+```bash\n(.+?)\n```", text, re.M | re.S)
  assert match, f"README.md has no bash block under '## {heading}'"
  return match.group(1).strip()


def test_ci_runs_exactly_the_readme_test_command():
  ci_lines = (ROOT / ".ci" / "run").read_text().strip().splitlines()
  assert ci_lines[-1].strip() == _readme_block_after("Test")


def test_ci_installs_what_readme_installs():
  ci = (ROOT / ".ci" / "run").read_text()
  for requirement_file in re.findall(r"-r (\S+)", _readme_block_after("Install")):
    assert requirement_file in ci
    assert (ROOT / requirement_file).is_file()


def test_aot_compilers_install_as_readme_says():
  """README's install line, CI's and the one the missing-compiler error names are one command."""
  from ccnet_jax.aot.libraries import INSTALL, REQUIREMENTS

  assert INSTALL in _readme_block_after("Install").splitlines()
  ci = (ROOT / ".ci" / "run").read_text()
  assert INSTALL.replace("pip install ", "pip install -q ") in ci.splitlines()
  assert (ROOT / REQUIREMENTS).is_file()
