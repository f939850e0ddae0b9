"""The learning test's outcome across seeds: how often R=2 fails to read the cue.

Trains tests/test_learning.py's task (its config, loop and metrics) once per seed and
recurrence and prints one row per seed: the shape mIoU (%) of each recurrence, R=2's cue
accuracy (%), and whether the test's criteria would pass for that seed. The rounding of the
CPU changes the outcome of a training run, so the table is worth taking under other XLA
configurations too:

  python benchmarks/learning_seeds.py --seeds 0-7
  python benchmarks/learning_seeds.py --seeds 0-7 --power 0.9      # the recipe's poly decay
  XLA_FLAGS=--xla_cpu_enable_fast_math=true python benchmarks/learning_seeds.py --seeds 0-7
"""

from __future__ import annotations

import argparse
import os
import sys
import time


def seed_list(text: str) -> list[int]:
  """'0-7' or '0,2,5'."""
  if "-" in text:
    first, last = text.split("-")
    return list(range(int(first), int(last) + 1))
  return [int(s) for s in text.split(",")]


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--seeds", default="0-7")
  parser.add_argument("--recurrences", default="0,2", help="the test compares 0 and 2")
  parser.add_argument(
      "--power", type=float, default=None, help="the poly schedule's power (default: the test's)"
  )
  args = parser.parse_args(argv)
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  # The test process's XLA flags (8 host devices) and compilation cache, set before jax starts.
  from tests import conftest  # noqa: F401  # pylint: disable=import-outside-toplevel,unused-import
  from tests import test_learning as t  # pylint: disable=import-outside-toplevel

  recurrences = [int(r) for r in args.recurrences.split(",")]
  power = t.learning_config(2).optim.power if args.power is None else args.power
  print(f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}, schedule power {power}", flush=True)
  header = " | ".join(f"R={r} shape mIoU" for r in recurrences)
  print(f"| seed | {header} | R=2 cue acc. | test passes | seconds |", flush=True)
  print("|---" * (len(recurrences) + 4) + "|", flush=True)
  for seed in seed_list(args.seeds):
    start = time.perf_counter()
    results = {
        r: t.train_and_evaluate_on_one_device(t.learning_config(r, seed)) for r in recurrences
    }
    cells = " | ".join(f"{100 * t.shape_miou(results[r]):.1f}" for r in recurrences)
    cue = passes = "-"
    if 2 in results:
      cue = f"{100 * t.cue_accuracy(results[2]):.1f}"
    if {0, 2} <= results.keys():
      passes = "yes" if t.passes(results[0], results[2]) else "NO"
    print(
        f"| {seed} | {cells} | {cue} | {passes} | {time.perf_counter() - start:.0f} |", flush=True
    )


if __name__ == "__main__":
  main()
