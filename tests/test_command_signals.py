"""A signal ends a command at any moment: exit status 130, one line, nothing half-written.

Each run sends the command SIGINT (Ctrl-C) or SIGTERM at one fixed point (tests/signal_runner.py):
while its libraries load, inside a garbage-collector callback (where Python's own KeyboardInterrupt
is swallowed and the command went on), half-way through a PNG, inside an export. What it must
leave: no temporary, every output file complete, an export's folder as it was.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

from ccnet_jax import atomic, interrupts
from tests.processes import ROOT, run_python

INTERRUPTED = "error: interrupted (SIG{}); "


@pytest.fixture(scope="module")
def model(saved_model):
  return str(saved_model.directory)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
  folder = tmp_path_factory.mktemp("images")
  rng = np.random.default_rng(0)
  for name in ("a", "b", "c"):
    Image.fromarray(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)).save(folder / f"{name}.png")
  return str(folder)


def run_with_signal(point, signal_name, *command):
  environment = {k: v for k, v in os.environ.items() if k != "CCNET_JAX_TRACEBACK"}
  runner = os.path.join(ROOT, "tests", "signal_runner.py")
  return run_python(runner, point, signal_name, *command, env=environment, one_device=True)


def assert_interrupted(result, signal_name, kept):
  assert result.returncode == 130, (result.returncode, result.stderr[-3000:])
  assert result.stderr.splitlines() == [INTERRUPTED.format(signal_name) + kept], result.stderr


def assert_whole_pngs(folder):
  """Nothing half-written: no temporary, and every PNG decodes to its end."""
  for root, dirs, files in os.walk(folder):
    for name in dirs + files:
      assert not atomic.is_partial(name), os.path.join(root, name)
    for name in files:
      with Image.open(os.path.join(root, name)) as image:
        image.load()


PREDICT_KEPT = "the outputs written so far are complete; none is half-written."
START_UP = interrupts.DEFAULT_MESSAGE  # Before the command runs: nothing written yet.


@pytest.mark.parametrize(
    "point, signal_name, kept",
    [
        ("import:jax", "INT", START_UP),  # Start-up: the libraries loading.
        ("gc", "INT", START_UP),  # A callback: Python's KeyboardInterrupt is swallowed there.
        ("png:2", "INT", PREDICT_KEPT),  # Half-way through the second output file.
        ("png:4", "TERM", PREDICT_KEPT),
    ],
)
def test_predict_ends_in_one_line_and_leaves_whole_files(
    model, images, tmp_path, point, signal_name, kept
):
  out = tmp_path / "out"
  result = run_with_signal(
      point, signal_name, "predict.py", f"--model={model}", images, f"--out={out}", "--noprogress"
  )
  assert_interrupted(result, signal_name, kept)
  if point.startswith("png:"):
    written = int(point.split(":")[1]) - 1  # The files before the interrupted one.
    assert len(os.listdir(out)) == written, os.listdir(out)
  if out.exists():
    assert_whole_pngs(out)


EXPORT_KEPT = "OUT_DIR is left as it was (an export replaces it whole or not at all)."


@pytest.mark.parametrize(
    "point, export_format",
    [
        ("import:tensorflow", "saved_model"),  # TensorFlow's native threads starting.
        ("call:jax.export:Exported.mlir_module", "stablehlo"),  # The second file of the export.
    ],
)
def test_export_ends_in_one_line_and_leaves_out_as_it_was(model, tmp_path, point, export_format):
  out = tmp_path / "exported"
  out.mkdir()
  (out / "model.mlir").write_text("a previous export")
  result = run_with_signal(
      point,
      "INT",
      "-m",
      "ccnet_jax.export",
      model,
      out,
      f"--format={export_format}",
      "--overwrite",
  )
  assert_interrupted(result, "INT", EXPORT_KEPT)
  assert sorted(os.listdir(tmp_path)) == ["exported"]
  assert (
      os.listdir(out) == ["model.mlir"] and (out / "model.mlir").read_text() == "a previous export"
  )
