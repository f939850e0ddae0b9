"""Where training starts: a fresh CCNet's losses against its recipe's reference network.

For each recipe, the model its config builds (``construct_model``, which ``build_model``
compiles; ResNet-101, R=2, 19 classes) against the reference network in PyTorch with the
reference's own initialisation (tests/torch_reference.py): the official CCNet with torch's
defaults (configs/cityscapes.py), and mmsegmentation's layout with mmseg's rules
(``torch_reference.mmseg_init_``; configs/ade20k.py and voc.py). Both run in train mode on
the same batch of random images (standard normal, as normalised images are) and uniformly
random labels; the table gives the standard deviation of the main logits and the
cross-entropy of each head (logits upsampled to the labels as the recipe's loss does, in
float64), mean +- standard deviation over --seeds initialisations of each side. ln 19 = 2.94.

  python benchmarks/initial_loss.py                       # R101, 2 images of 129x129, 5 seeds
  python benchmarks/initial_loss.py --depth 50 --seeds 3 --recipes official
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_CLASSES = 19
# name: (model preset, the recipe's loss align_corners (configs/common.py), reference).
RECIPES = {
    "official": ("ccnet_r101_official", True, "the official network, torch's default init"),
    "mmseg": ("ccnet_r101_d8_mmseg", False, "mmseg's layout, mmseg's init"),
}


def loss_statistics(main, aux, labels, align_corners: bool) -> list[float]:
  """[std of the main logits, CE main, CE aux] of NHWC logits at the output stride."""
  import torch  # pylint: disable=import-outside-toplevel
  import torch.nn.functional as F  # pylint: disable=import-outside-toplevel

  target = torch.from_numpy(labels).long()

  def cross_entropy(logits):
    logits = torch.from_numpy(np.asarray(logits, np.float64)).permute(0, 3, 1, 2)
    logits = F.interpolate(
        logits, size=labels.shape[1:], mode="bilinear", align_corners=align_corners
    )
    return F.cross_entropy(logits, target).item()

  return [float(np.asarray(main, np.float64).std()), cross_entropy(main), cross_entropy(aux)]


def ours(recipe: str, depth: int, images, labels, seeds: int) -> np.ndarray:
  import jax  # pylint: disable=import-outside-toplevel

  from ccnet_jax.models.registry import construct_model, model_config  # pylint: disable=import-outside-toplevel

  preset, align_corners, _ = RECIPES[recipe]
  config = model_config(preset, num_classes=NUM_CLASSES)
  config.backbone.depth = depth

  def forward(key, x):
    model = construct_model(config, seed=key)
    model.train()
    return model(x)

  # One program for every seed; the random draws gain nothing from XLA's optimisations.
  run = (
      jax.jit(forward)
      .lower(jax.random.key(0), images)
      .compile({"xla_backend_optimization_level": 0})
  )
  rows = []
  for seed in range(seeds):
    main, aux = run(jax.random.key(seed), images)
    rows.append(loss_statistics(main, aux, labels, align_corners))
  return np.array(rows)


def reference(recipe: str, depth: int, images, labels, seeds: int) -> np.ndarray:
  import torch  # pylint: disable=import-outside-toplevel

  from tests import torch_reference  # pylint: disable=import-outside-toplevel

  _, align_corners, _ = RECIPES[recipe]
  x = torch.from_numpy(images).permute(0, 3, 1, 2)
  rows = []
  for seed in range(seeds):
    torch.manual_seed(seed)
    if recipe == "official":
      net = torch_reference.OfficialCCNet(depth, NUM_CLASSES, recurrence=2)
    else:
      net = torch_reference.mmseg_init_(torch_reference.MMSegCCNet(depth, NUM_CLASSES, 2))
    with torch.no_grad():
      main, aux = net.train()(x)
    rows.append(
        loss_statistics(
            main.permute(0, 2, 3, 1).numpy(), aux.permute(0, 2, 3, 1).numpy(), labels, align_corners
        )
    )
  return np.array(rows)


def _cell(values: np.ndarray) -> str:
  if len(values) == 1:
    return f"{values[0]:.2f}"
  return f"{values.mean():.2f} +- {values.std(ddof=1):.2f}"


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--recipes", default="official,mmseg")
  parser.add_argument("--depth", type=int, default=101)
  parser.add_argument("--size", type=int, default=129)
  parser.add_argument("--batch", type=int, default=2)
  parser.add_argument("--seeds", type=int, default=5)
  args = parser.parse_args(argv)
  sys.path.insert(0, ROOT)
  recipes = args.recipes.split(",")
  for recipe in recipes:
    if recipe not in RECIPES:
      raise SystemExit(f"error: --recipes: {recipe!r} is not one of {sorted(RECIPES)}")

  rng = np.random.default_rng(0)
  images = rng.normal(size=(args.batch, args.size, args.size, 3)).astype(np.float32)
  labels = rng.integers(0, NUM_CLASSES, size=(args.batch, args.size, args.size))
  lines = [
      f"ResNet-{args.depth}, R=2, {NUM_CLASSES} classes, train mode, {args.batch} random"
      f" {args.size}x{args.size} images; mean +- std over {args.seeds} initialisations;"
      f" ln {NUM_CLASSES} = {math.log(NUM_CLASSES):.2f}.",
      "",
      "| recipe | network | logits std | CE main | CE aux |",
      "|---|---|---:|---:|---:|",
  ]
  for recipe in recipes:
    start = time.perf_counter()
    rows = {
        "ccnet-jax": ours(recipe, args.depth, images, labels, args.seeds),
        f"PyTorch, {RECIPES[recipe][2]}": reference(recipe, args.depth, images, labels, args.seeds),
    }
    for name, values in rows.items():
      cells = " | ".join(_cell(values[:, column]) for column in range(3))
      lines.append(f"| {recipe} | {name} | {cells} |")
    print(f"[{recipe}: {time.perf_counter() - start:.0f} s]", file=sys.stderr, flush=True)
  print("\n".join(lines))


if __name__ == "__main__":
  main()
