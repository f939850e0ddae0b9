"""The paper's recurrence ablation in miniature: R = 0, 1, 2 on the synthetic data.

Trains the demo model (configs/synthetic.py) once per recurrence with the same
budget, seed and data, and prints their validation mIoU side by side. The synthetic
data needs long-range context to label its shapes, which R = 0 (an FCN head) lacks.

  python benchmarks/recurrence_ablation.py                   # the demo budget
  python benchmarks/recurrence_ablation.py --steps 300 --recurrences 0,2
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ccnet_jax.data.labels import dataset_info
from ccnet_jax.trainer import train_and_evaluate
from configs import synthetic


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--recurrences", default="0,1,2")
  parser.add_argument("--steps", type=int, default=None, help="default: the demo's")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--workdir", default=None, help="default: a temporary directory")
  args = parser.parse_args()

  workdir = args.workdir or tempfile.mkdtemp(prefix="recurrence_ablation_")
  rows = []
  for recurrence in [int(r) for r in args.recurrences.split(",")]:
    config = synthetic.get_config()
    config.model.head.recurrence = recurrence
    config.train.seed = args.seed
    config.train.eval_every = 0
    if args.steps:
      config.train.total_steps = args.steps
    start = time.perf_counter()
    metrics = train_and_evaluate(config, os.path.join(workdir, f"r{recurrence}"))
    rows.append((recurrence, metrics, time.perf_counter() - start))

  names = dataset_info("synthetic").class_names
  print(f"\nsynthetic data, {config.train.total_steps} steps, seed {args.seed}\n")
  print("| R | mIoU | pixel acc. | " + " | ".join(names) + " | train+eval time |")
  print("|---" * (len(names) + 4) + "|")
  for recurrence, metrics, seconds in rows:
    ious = " | ".join(f"{100 * v:.1f}" for v in metrics["iou"])
    print(
        f"| {recurrence} | {100 * metrics['miou']:.1f} | {100 * metrics['pixel_accuracy']:.1f}"
        f" | {ious} | {seconds:.0f} s |"
    )


if __name__ == "__main__":
  main()
