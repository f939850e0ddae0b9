"""How long the explorer makes a user wait: a new image, and a click on a pixel, over HTTP.

Starts the explorer's server in this process on a model directory, sends a demo scene as the
page does, and times the answers the page waits for: the first /predict (the compile for the
image size and the analysis), /predict of another scene of that size (the analysis alone),
and --clicks /attention requests at random pixels of it (the maps of one pixel, read from the
kept analysis, with their heat images).

  python benchmarks/explorer_latency.py --model /tmp/demo/model
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import urllib.request

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ccnet_jax.explore.backend import ExploredModel
from ccnet_jax.explore.server import make_app, serving
from ccnet_jax.explore.session import Explorer


def timed_post(url: str, body: bytes) -> tuple[float, bytes]:
  start = time.perf_counter()
  request = urllib.request.Request(url, data=body, method="POST")
  with urllib.request.urlopen(request, timeout=600) as response:
    answer = response.read()
  return time.perf_counter() - start, answer


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--model", required=True, help="model directory or training workdir")
  parser.add_argument("--clicks", type=int, default=50)
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args()

  explorer = Explorer(ExploredModel(args.model))
  with serving(make_app(explorer)) as url:
    scenes = []
    for index in (0, 1):
      with urllib.request.urlopen(f"{url}demo/{index}") as response:
        scenes.append(response.read())
    first, _ = timed_post(url + "predict", scenes[0])
    second, _ = timed_post(url + "predict", scenes[1])
    rng = np.random.default_rng(args.seed)
    height, width = explorer.predict(scenes[1]).shape
    clicks = []
    for _ in range(args.clicks):
      y, x = int(rng.integers(height)), int(rng.integers(width))
      clicks.append(timed_post(f"{url}attention?y={y}&x={x}", scenes[1])[0])
  assert explorer.analyses_computed == 2  # The clicks computed no analysis.
  clicks_ms = np.array(clicks) * 1e3
  print(f"{explorer.model.source}, {height}x{width} demo scenes, {args.clicks} clicks")
  print("| request | ms |")
  print("|---|---:|")
  print(f"| first image (compile + analysis) | {first * 1e3:.0f} |")
  print(f"| next image of that size (analysis) | {second * 1e3:.0f} |")
  print(f"| click, median | {np.median(clicks_ms):.1f} |")
  print(f"| click, 90th percentile | {np.percentile(clicks_ms, 90):.1f} |")
  print(f"| click, slowest | {clicks_ms.max():.1f} |")


if __name__ == "__main__":
  main()
