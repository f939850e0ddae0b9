"""A loaded model with fixed inference settings: uint8 RGB images in, train ids out.

Inference is evaluation's (:func:`ccnet_jax.evaluation.inference.predict_logits`): whole
image or sliding windows, optionally several scales and flips, on images of any size; the
model's own :class:`~ccnet_jax.models.preprocessing.Preprocessing` turns the images into its
input.

A program is compiled for each image size and batch size, and checked against the memory its
device has free before it runs (:mod:`ccnet_jax.prediction.memory`): whole-image inference
that does not fit switches to sliding windows for that size, saying so in one line (or, when
told not to, stops with one line); what fits in no mode stops with one line. Batches are
padded only to the next power of two (at most ``batch_size``), so a batch is never more than
twice the images it holds and each size compiles at most log2(batch_size) + 1 programs.
"""

from __future__ import annotations

import dataclasses
import functools
import sys
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from ccnet_jax.data.labels import dataset_for_model
from ccnet_jax.errors import UserError
from ccnet_jax.evaluation.evaluator import model_predict_fn
from ccnet_jax.evaluation.inference import InferenceSettings, predict_logits
from ccnet_jax.loading import LoadedModel
from ccnet_jax.models.preprocessing import Preprocessing
from ccnet_jax.prediction import memory


def bucket_size(count: int, batch_size: int) -> int:
  """The batch that ``count`` images (1..batch_size) are padded to: the next power of two,
  at most ``batch_size``."""
  return min(batch_size, 1 << max(int(count) - 1, 0).bit_length())


def _report(line: str) -> None:
  tqdm.write(line, file=sys.stderr)  # Above a progress bar, if one runs.


class Predictor:
  """Labels images with a model; programs compiled per image size and batch, memory-checked."""

  def __init__(
      self,
      loaded: LoadedModel,
      *,
      settings: InferenceSettings = InferenceSettings(),
      dataset: str | None = None,
      batch_size: int = 1,
      fallback_to_sliding: bool = True,
      memory_budget: int | None = None,
      report: Callable[[str], None] = _report,
  ):
    """
    Args:
      loaded: the model (:func:`ccnet_jax.loading.load_model`).
      settings: whole image or sliding windows, scales, flip.
      dataset: palette / label-id convention; default: inferred from the class count.
      batch_size: at most this many images of one size are predicted together.
      fallback_to_sliding: whole-image inference that does not fit in memory switches to
        sliding windows (``settings.crop_size``, ``overlap``) for that image size; False
        stops with one line instead.
      memory_budget: bytes a program may take; default: what the device has free.
      report: where the one line about a switch to sliding windows goes (stderr).
    """
    if int(batch_size) < 1:
      raise ValueError(f"--batch_size={batch_size} must be at least 1.")
    self.loaded = loaded
    self.settings = settings
    self.preprocessing = loaded.preprocessing
    self.dataset = dataset_for_model(loaded.num_classes, dataset)
    self.batch_size = int(batch_size)
    self.fallback_to_sliding = fallback_to_sliding
    self.memory_budget = memory_budget
    self._report = report
    self._predict_fn, self._state = model_predict_fn(loaded.model)
    self._state_bytes = sum(x.nbytes for x in jax.tree.leaves(self._state))
    self._device = jax.tree.leaves(self._state)[0].devices().pop()
    self._programs: dict[tuple[int, ...], tuple[str, jax.stages.Compiled]] = {}

  @property
  def compiled(self) -> dict[tuple[int, ...], str]:
    """{(batch, height, width, 3): mode} of every program compiled so far."""
    return {shape: mode for shape, (mode, _) in self._programs.items()}

  def _compile(self, shape: tuple[int, ...], settings: InferenceSettings):
    infer = functools.partial(
        predict_logits, num_classes=self.loaded.num_classes, settings=settings
    )
    labels = lambda state, images: jnp.argmax(  # noqa: E731
        infer(functools.partial(self._predict_fn, state), images), -1
    )
    images = jax.ShapeDtypeStruct(shape, jnp.float32)
    compiled = jax.jit(labels).lower(self._state, images).compile()
    return compiled, memory.program_bytes(compiled, resident=self._state_bytes)

  def _program(self, shape: tuple[int, ...]) -> jax.stages.Compiled:
    """The program for a batch of ``shape``, compiled and memory-checked the first time."""
    if shape in self._programs:
      return self._programs[shape][1]
    free = self.memory_budget
    if free is None:
      free = memory.free_bytes(self._device)
    compiled, needed = self._compile(shape, self.settings)
    mode = self.settings.mode
    if free is not None and needed > free:
      size = f"{shape[1]}x{shape[2]} images" + (f" (batch {shape[0]})" if shape[0] > 1 else "")
      where = f"the {memory.gigabytes(free)} free on {self._device.platform}"
      if mode == "whole" and not self.fallback_to_sliding:
        raise UserError(
            f"whole-image inference of {size} needs {memory.gigabytes(needed)}, more than {where};"
            f" run with --mode=sliding (windows of --crop_size)."
        )
      if mode == "whole":
        sliding = dataclasses.replace(self.settings, mode="sliding")
        compiled, sliding_needed = self._compile(shape, sliding)
        if sliding_needed <= free:
          crop = "x".join(map(str, sliding.crop_size))
          self._report(
              f"note: whole-image inference of {size} needs {memory.gigabytes(needed)}, more than"
              f" {where}: these are predicted in sliding windows of {crop} (--mode=sliding,"
              " --crop_size)."
          )
          mode, needed = "sliding", sliding_needed
      if needed > free:
        crop = "x".join(map(str, self.settings.crop_size))
        batch = " or --batch_size" if shape[0] > 1 else ""
        raise UserError(
            f"sliding-window inference of {size} in {crop} windows needs"
            f" {memory.gigabytes(needed)}, more than {where}; use a smaller --crop_size{batch}."
        )
    self._programs[shape] = (mode, compiled)
    return compiled

  def __call__(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
    """(H, W) uint8 train ids for each uint8 (H, W, 3) RGB image; all of one size."""
    return label_in_batches(
        images,
        self.batch_size,
        self.preprocessing,
        lambda batch: self._program(batch.shape)(self._state, batch),
    )


def label_in_batches(
    images: Sequence[np.ndarray],
    batch_size: int,
    preprocessing: Preprocessing,
    labels: Callable[[np.ndarray], jax.Array],
) -> list[np.ndarray]:
  """``labels`` (normalised batch -> train ids) over ``images`` in batches of ``batch_size``.

  A short batch is padded with zeros to :func:`bucket_size`: never more than twice the images
  it holds, and a few compiled programs per image size.
  """
  result = []
  for start in range(0, len(images), batch_size):
    chunk = [preprocessing.normalize(image) for image in images[start : start + batch_size]]
    padding = [np.zeros_like(chunk[0])] * (bucket_size(len(chunk), batch_size) - len(chunk))
    result.extend(np.asarray(labels(np.stack(chunk + padding)), np.uint8)[: len(chunk)])
  return result
