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
