"""ONNX Runtime against JAX on this machine's CPU: the network alone, and predict.py's pipeline.

  python train.py --config configs/synthetic.py --workdir /tmp/demo
  python -m ccnet_jax.export /tmp/demo/model /tmp/demo_onnx --format=onnx --batch=0
  python benchmarks/onnx_runtime.py --model=/tmp/demo/model --export=/tmp/demo_onnx

Both run in this process, one call of each in turn (so that a change in the machine's load
touches both alike), after a warm-up that compiles JAX's programs and ONNX Runtime's session.
Rows: the serving function (RGB 0-255 batch -> logits at the output stride) as JAX jit and as
the ONNX model; and predict.py's per-image work (normalise, network, upsample, argmax) through
``Predictor`` and ``RuntimePredictor`` on the ONNX Runtime session. The load average is printed with the table.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import jax
import numpy as np

from ccnet_jax.data.synthetic import SyntheticLongRange
from ccnet_jax.export.onnx_runtime import OnnxModel
from ccnet_jax.export.serving import serving_fn
from ccnet_jax.loading import load_model
from ccnet_jax.prediction.predictor import Predictor
from ccnet_jax.prediction.runtime import RuntimePredictor


def _alternate(functions: dict, repeats: int) -> dict[str, tuple[list[float], list[float]]]:
  """(wall, CPU) seconds per call of each function, called in turn ``repeats`` times after one
  warm-up. CPU time is the process's, every thread included (spinning worker threads too)."""
  for function in functions.values():
    function()
  times = {name: ([], []) for name in functions}
  for _ in range(repeats):
    for name, function in functions.items():
      wall, cpu = time.perf_counter(), time.process_time()
      function()
      times[name][0].append(time.perf_counter() - wall)
      times[name][1].append(time.process_time() - cpu)
  return times


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--model", required=True, help="the model directory that was exported")
  parser.add_argument("--export", required=True, help="its ONNX export folder")
  parser.add_argument("--repeats", type=int, default=200)
  parser.add_argument("--batch", type=int, default=1)
  parser.add_argument("--size", default="256,64", help="image height,width")
  parser.add_argument(
      "--threads",
      type=int,
      default=0,
      help="ONNX Runtime's intra-op threads (0: its default); XLA's are set by XLA_FLAGS",
  )
  args = parser.parse_args()
  height, width = (int(s) for s in args.size.split(","))

  scenes = SyntheticLongRange(args.batch, (height, width), seed=1)
  rgb = np.stack([scenes[i]["image"] for i in range(args.batch)])
  images = rgb.astype(np.float32)

  loaded = load_model(args.model, cca_impl="einsum")  # What the other exports serve.
  serve = jax.jit(serving_fn(loaded.model, loaded.preprocessing))
  session = OnnxModel(args.export, provider="cpu", threads=args.threads)
  predictors = {
      "predict.py, JAX": Predictor(loaded, batch_size=args.batch),
      "predict.py, ONNX Runtime": RuntimePredictor(session, batch_size=args.batch),
  }
  functions = {
      "network, JAX jit": lambda: serve(images).block_until_ready(),
      "network, ONNX Runtime": lambda: session(images),
      **{name: (lambda p=p: p(list(rgb))) for name, p in predictors.items()},
  }
  load_before = os.getloadavg()
  times = _alternate(functions, args.repeats)
  load_after = os.getloadavg()

  print(
      f"{args.batch} image(s) of {height}x{width}, {args.repeats} alternating calls each;"
      f" {os.cpu_count()} CPUs, load average (1 min) {load_before[0]:.1f} before,"
      f" {load_after[0]:.1f} after; ONNX Runtime threads: {args.threads or 'default'},"
      f" XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}; jax {jax.__version__}"
  )
  print(f"| {'what':<26} | wall median ms | wall min ms | CPU median ms |")
  print(f"|{'-' * 28}|---------------:|------------:|--------------:|")
  for name, (wall, cpu) in times.items():
    print(
        f"| {name:<26} | {1e3 * statistics.median(wall):14.1f} | {1e3 * min(wall):11.1f} |"
        f" {1e3 * statistics.median(cpu):13.1f} |"
    )


if __name__ == "__main__":
  main()
