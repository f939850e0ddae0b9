"""What the accurate (two-pass) BatchNorm variance costs a training step.

Times the jitted train step with ``model.bn_fast_variance`` False (two passes,
E[(x - E[x])^2], the default) and True (one pass, E[x^2] - E[x]^2), alternating
the two so that machine load affects both alike, and prints the median step time
of each. The network is the demo's unless a config says otherwise.

  python benchmarks/batch_norm_variance.py
  python benchmarks/batch_norm_variance.py --config configs/cityscapes.py --batch 2 --size 513
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import time

import jax
import numpy as np

from ccnet_jax import training
from ccnet_jax.models.registry import build_model


def _config(path: str):
  spec = importlib.util.spec_from_file_location("benchmark_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def _step_and_inputs(config, fast: bool, batch: int, height: int, width: int):
  """The compiled train step, its initial state and a random batch."""
  config.model.bn_fast_variance = fast
  model = build_model(config.model)
  tx, schedule = training.make_optimizer(config.optim, 1000)
  model_def, state = training.create_train_state(model, tx, seed=0)
  mesh = training.make_mesh(jax.devices()[:1])
  rng = np.random.default_rng(0)
  data = {
      "image": rng.normal(size=(batch, height, width, 3)).astype(np.float32),
      "label": rng.integers(0, config.model.num_classes, (batch, height, width), np.int32),
  }
  step = training.make_train_step(model_def, tx, schedule, config.loss, mesh)
  state, data = training.replicate(state, mesh), training.global_batch(data, mesh)
  return step, state, data


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--config", default="configs/synthetic.py")
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--size", type=int, nargs=2, default=(256, 64), metavar=("H", "W"))
  parser.add_argument("--runs", type=int, default=10)
  args = parser.parse_args()
  runs = {}
  for fast in (False, True):
    step, state, data = _step_and_inputs(_config(args.config), fast, args.batch, *args.size)
    state, _ = step(state, data)  # Compile and warm up.
    jax.block_until_ready(state)
    runs[fast] = [step, state, data, []]
  for _ in range(args.runs):
    for fast, run in runs.items():
      step, state, data, times = run
      start = time.perf_counter()
      run[1], metrics = step(state, data)
      jax.block_until_ready(metrics)
      times.append(time.perf_counter() - start)
  two_pass, one_pass = (statistics.median(runs[fast][3]) for fast in (False, True))
  print(f"device: {jax.devices()[0].device_kind}; batch {args.batch} of {args.size[0]}x"
        f"{args.size[1]}; median of {args.runs} steps")
  print(f"two-pass variance (default): {two_pass * 1e3:.1f} ms/step")
  print(f"one-pass variance:           {one_pass * 1e3:.1f} ms/step")
  print(f"two-pass / one-pass:         {two_pass / one_pass:.3f}")


if __name__ == "__main__":
  main()
