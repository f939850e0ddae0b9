"""A procedurally generated segmentation dataset in which long-range context is needed.

Every example is a pure function of ``(seed, index)``: nothing is downloaded or stored, so the
dataset is the project's embedded demo and a fast end-to-end check of training and evaluation.

Scene (``image_size`` = (height, width), 256x64 in the preset), six classes plus ignore:

* 0 background: dark grey noise over the whole image.
* 1 cue stripe: the top ``max(2, height // 16)`` rows are painted in one of three cue colours
  (red, green or blue, with noise), drawn per image.
* 2, 3, 4 shapes: one to three grey rectangles or discs in the lower half of the image. They
  look the same whatever the cue is; their class is 2 + cue (red -> 2, green -> 3, blue -> 4).
  A shape is at least ``height // 2 - stripe`` rows away from the stripe, so its label cannot be
  read from its neighbourhood: a network must carry the stripe's colour down to the shape.
  Criss-cross attention does this in one step (every pixel attends to its whole column, which
  crosses the stripe); a CNN whose effective receptive field is smaller than the distance can
  only guess one of the three classes for every shape.
* 5 checker patch: zero or one small yellow/black checkerboard anywhere below the stripe,
  decidable from local texture alone (a control class that every model should learn).
* 255 ignore: the one-pixel ring around each shape, whose pixels are blended with the
  background and so ambiguous (as object boundaries are in real datasets).

Horizontal flips keep the stripe on top, so the usual flip augmentation stays valid.

At 64x64 the dilated backbone alone reaches the stripe and a network without attention labels
the shapes as well as one with it, so the scenes are tall. ``benchmarks/recurrence_ablation.py``
measures the difference that remains at 256x64 (README: R=0 52.4 vs R=2 88.4 mIoU).
"""

from __future__ import annotations

import numpy as np

from ccnet_jax.data.labels import IGNORE_LABEL

NUM_CLASSES = 6
BACKGROUND, STRIPE, SHAPE_RED, CHECKER = 0, 1, 2, 5
CUE_COLOURS = np.array([(210, 30, 30), (30, 190, 50), (40, 70, 220)], np.float32)
SHAPE_GREY = 150.0


def stripe_height(height: int) -> int:
  return max(2, height // 16)


def image_shape(image_size: int | tuple[int, int]) -> tuple[int, int]:
  """(height, width) from ``data.synthetic.image_size``: one int (square) or (height, width)."""
  shape = (image_size, image_size) if np.isscalar(image_size) else tuple(image_size)
  if len(shape) != 2 or min(shape) < 16:
    raise ValueError(
        f"data.synthetic.image_size={image_size!r} must be an int or "
        "(height, width), each at least 16."
    )
  return int(shape[0]), int(shape[1])


class SyntheticLongRange:
  """Random-access source of synthetic examples (see the module docstring for the scene)."""

  def __init__(
      self, num_examples: int, image_size: int | tuple[int, int], seed: int, *, start_index: int = 0
  ):
    if num_examples <= 0:
      raise ValueError(f"data.synthetic.num_train/num_eval must be positive, got {num_examples}.")
    self.image_size = image_shape(image_size)
    self.num_examples = int(num_examples)
    self.seed = int(seed)
    # Evaluation examples continue the index range of the training ones, so they never overlap.
    self.start_index = int(start_index)

  def __len__(self) -> int:
    return self.num_examples

  def __repr__(self) -> str:
    return (
        f"SyntheticLongRange(num_examples={self.num_examples}, image_size={self.image_size}, "
        f"seed={self.seed}, start_index={self.start_index})"
    )

  def __getitem__(self, index: int) -> dict:
    if not 0 <= index < self.num_examples:
      raise IndexError(f"index {index} out of range for {self.num_examples} examples")
    global_index = self.start_index + int(index)
    rng = np.random.default_rng([self.seed, global_index])
    image, label = render(rng, self.image_size)
    return {"image": image, "label": label, "name": f"synthetic_{self.seed}_{global_index:06d}"}


def render(rng: np.random.Generator, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
  """Draws one scene: uint8 RGB image (height, width, 3) and uint8 label (height, width)."""
  height, width = shape
  size = min(height, width)  # scales the objects
  image = 60.0 + rng.normal(0.0, 12.0, (height, width, 3)).astype(np.float32)
  label = np.full((height, width), BACKGROUND, np.uint8)
  yy, xx = np.mgrid[:height, :width]

  top = stripe_height(height)
  cue = int(rng.integers(3))
  image[:top] = CUE_COLOURS[cue] + rng.normal(0.0, 10.0, (top, width, 3))
  label[:top] = STRIPE

  half = height // 2
  for _ in range(int(rng.integers(1, 4))):
    extent = int(rng.integers(max(3, size // 12), max(4, size // 5) + 1))
    cy = int(rng.integers(half + extent // 2, height - extent // 2))
    cx = int(rng.integers(extent // 2, width - extent // 2))
    if rng.random() < 0.5:
      inside = (np.abs(yy - cy) <= extent // 2) & (np.abs(xx - cx) <= extent // 2)
      near = (np.abs(yy - cy) <= extent // 2 + 1) & (np.abs(xx - cx) <= extent // 2 + 1)
    else:
      dist2 = (yy - cy) ** 2 + (xx - cx) ** 2
      inside = dist2 <= (extent / 2) ** 2
      near = dist2 <= (extent / 2 + 1.5) ** 2
    ring = near & ~inside & (yy >= top)
    image[ring] = 0.5 * image[ring] + 0.5 * SHAPE_GREY
    label[ring] = IGNORE_LABEL
    image[inside] = SHAPE_GREY + rng.normal(0.0, 8.0, (int(inside.sum()), 1))
    label[inside] = SHAPE_RED + cue

  if rng.random() < 0.7:
    extent = int(rng.integers(max(4, size // 10), max(5, size // 6) + 1))
    y0 = int(rng.integers(top + 1, height - extent))
    x0 = int(rng.integers(0, width - extent))
    patch = (slice(y0, y0 + extent), slice(x0, x0 + extent))
    checks = ((yy[patch] // 2 + xx[patch] // 2) % 2).astype(bool)
    image[patch] = np.where(checks[..., None], np.float32((240, 200, 40)), np.float32(15))
    label[patch] = CHECKER

  return np.clip(np.rint(image), 0, 255).astype(np.uint8), label
