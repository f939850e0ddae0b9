"""The benchmarks measure what they claim: the attention cost's FLOPs equal the closed form;
the kernel sweep runs every flag on CPU and reports failures as rows."""

import json
import os
import sys

import jax.numpy as jnp
import pytest

from ccnet_jax.ops.pallas import BlockSizes

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))
_saved_flags = os.environ.get("XLA_FLAGS")
import attention_cost  # noqa: E402  (sets an XLA flag for its own processes)
import cca_kernels

from tests.processes import run_python

if _saved_flags is None:
  os.environ.pop("XLA_FLAGS", None)
else:
  os.environ["XLA_FLAGS"] = _saved_flags


def _attention_block_flops(pixels: int, attended: int, channels: int) -> float:
  """Multiply-adds x 2 of the q/k/v 1x1 convs and of the energy and aggregation products."""
  key_channels = channels // 8
  projections = pixels * channels * (2 * key_channels + channels)
  products = pixels * attended * (key_channels + channels)
  return 2.0 * (projections + products)


@pytest.mark.parametrize("size", [9, 12])
def test_inference_flop_increments_match_closed_form(size):
  increments = attention_cost.increments(size, batch=1, training=False)
  pixels, channels = size * size, attention_cost.IN_FEATURES // 4
  for recurrence in (1, 2, 3):
    expected = recurrence * _attention_block_flops(pixels, 2 * size, channels)
    measured = increments[f"criss_cross R={recurrence}"].gflops * 1e9
    assert measured == pytest.approx(expected, rel=0.02)
  expected = _attention_block_flops(pixels, pixels, channels)
  assert increments["non_local"].gflops * 1e9 == pytest.approx(expected, rel=0.02)


_TINY = ["--size", "3", "--batch", "1", "--key-channels", "8", "--channels", "16"]


def _run_cca_kernels(*flags):
  return run_python("benchmarks/cca_kernels.py", *_TINY, *flags, one_device=True)


def test_cca_sweep_of_one_configuration_writes_table_and_json(tmp_path):
  """On CPU the kernels run untimed in the interpreter; the rows still say how far they are."""
  path = tmp_path / "rows.jsonl"
  result = _run_cca_kernels(
      "--sweep",
      "--dtype",
      "float32",
      "--json",
      str(path),
      "--block-sizes",
      "query_block=16,channel_slice=16",
  )
  assert result.returncode == 0, result.stderr
  assert "| einsum | - | - | - | - | - | - | - |" in result.stdout
  assert "| 16 | 16 | 8 | 1 | - | - | - | - |" in result.stdout
  rows = [json.loads(line) for line in path.read_text().splitlines()]
  assert [row["implementation"] for row in rows] == ["einsum", "pallas"]
  assert rows[1]["query_block"] == 16 and "failed" not in rows[1]
  # Against the einsum in float32 (the interpreter's products are exact in float32).
  assert rows[1]["max_deviation"] < 1e-5


def test_cca_bad_block_sizes_is_one_line():
  result = _run_cca_kernels("--sweep", "--block-sizes", "query_block=48")
  assert result.returncode == 1
  assert result.stderr.strip().startswith("error: BlockSizes.query_block=48")
  assert "Traceback" not in result.stderr


def test_cca_sweep_reports_a_failing_configuration_and_goes_on(monkeypatch):
  fine = cca_kernels._pallas

  def fails_for_32(block_sizes, pad=None):
    if block_sizes.query_block == 32:
      raise RuntimeError("Triton: out of resources\nsecond line")
    return fine(block_sizes, pad)

  monkeypatch.setattr(cca_kernels, "_pallas", fails_for_32)
  configurations = [BlockSizes(query_block=32), BlockSizes(query_block=16)]
  rows = list(cca_kernels.sweep_rows(3, 1, 8, 16, jnp.float32, 1, 0, configurations))
  assert rows[1]["failed"] == "RuntimeError: Triton: out of resources"
  assert "failed" not in rows[2] and rows[2]["max_deviation"] < 1e-5
  line = cca_kernels._sweep_line(rows[1], rows[0])
  assert line.startswith("| 32 | 128 | 8 | 1 | failed: RuntimeError")


def test_parse_block_sizes():
  assert cca_kernels.parse_block_sizes("query_block=32,num_warps=4") == BlockSizes(
      query_block=32, num_warps=4
  )
  assert cca_kernels.parse_block_sizes("") == BlockSizes()
  with pytest.raises(ValueError, match="NAME=INTEGER"):
    cca_kernels.parse_block_sizes("block=32")


# README "Efficiency" section: train-step memory (MB) that attention adds to the head on the
# 97x97 map, from XLA's buffer assignment with the pinned jax on CPU.
README_MEMORY_MB = {"non_local": 1195, "criss_cross": 195}

_MEASURE_MEMORY = """
import json, sys
sys.path.insert(0, 'benchmarks')
import attention_cost  # Sets the benchmark's XLA flag before jax starts, as when it is run.
cost = lambda *a: attention_cost.head_cost(*a, 97, 1, training=True).memory_mb
baseline = cost('none', 0)
print(json.dumps({'non_local': cost('non_local', 1) - baseline,
                  'criss_cross': cost('criss_cross', 2) - baseline}))
"""


def test_readme_memory_figures_within_five_percent():
  """Measured as the benchmark measures them, in a fresh process: XLA's flags are read once,
  when jax starts. Its buffer plan is deterministic for one jax version: 5% absorbs small
  changes in fusion; outside it the README's tables must be measured again."""
  result = run_python("-c", _MEASURE_MEMORY, one_device=True)
  assert result.returncode == 0, result.stderr
  measured = json.loads(result.stdout.splitlines()[-1])
  for name, megabytes in README_MEMORY_MB.items():
    assert measured[name] == pytest.approx(megabytes, rel=0.05), (name, measured)
