"""The attention-cost benchmark measures what it claims: its FLOPs equal the closed form."""

import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))
_saved_flags = os.environ.get("XLA_FLAGS")
import attention_cost  # noqa: E402  (sets an XLA flag for its own processes)

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
  import json  # pylint: disable=g-import-not-at-top
  import subprocess  # pylint: disable=g-import-not-at-top

  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = dict(os.environ, PYTHONPATH=root)
  env.pop("XLA_FLAGS", None)
  result = subprocess.run([sys.executable, "-c", _MEASURE_MEMORY], cwd=root, env=env,
                          capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr
  measured = json.loads(result.stdout.splitlines()[-1])
  for name, megabytes in README_MEMORY_MB.items():
    assert measured[name] == pytest.approx(megabytes, rel=0.05), (name, measured)
