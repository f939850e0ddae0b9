"""The explorer's one door into the rest of the project: model, inference, attention, demo data.

Every call the explorer makes into model directories, prediction, the attention figures and the
synthetic data goes through this module, so that the web layer above it sees plain numpy arrays.
The network is compiled once per (image size, inference mode) and the programs are kept; one
program gives an image's class probabilities and each loop's criss-cross weights together, and a
clicked pixel's maps are then composed from those weights on the host (no network pass a click).
"""

from __future__ import annotations

import dataclasses
import functools
import threading
from typing import Any

import jax
import numpy as np
from flax import nnx

from ccnet_jax.data.config import data_config
from ccnet_jax.data.images import rgb_array
from ccnet_jax.data.labels import DATASET_NAMES, dataset_for_model
from ccnet_jax.data.sources import build_source
from ccnet_jax.evaluation.inference import MODES, InferenceSettings, predict_logits
from ccnet_jax.loading import load_model
from ccnet_jax.prediction.media import IMAGE_EXTENSIONS
from ccnet_jax.visualize.attention import HEAT_DECADES, heat, pixel_attention, upsample

__all__ = [
    "DATASET_NAMES",
    "HEAT_DECADES",
    "IMAGE_EXTENSIONS",
    "MODES",
    "InferenceSettings",
    "Analysis",
    "ExploredModel",
    "PixelMaps",
    "demo_scenes",
    "has_criss_cross",
    "heat_scale",
    "pixel_maps",
    "rgb_array",
]


@dataclasses.dataclass(frozen=True)
class Analysis:
  """What one image gives, computed once: every later click reads from it."""

  labels: np.ndarray  # (H, W) uint8 class ids.
  probabilities: np.ndarray  # (H, W, K) float32, softmax of the upsampled logits.
  attention: tuple[np.ndarray, ...]  # Each loop's (h, w, h + w) weights; empty without CCA.

  @property
  def nbytes(self) -> int:
    return self.labels.nbytes + self.probabilities.nbytes + sum(a.nbytes for a in self.attention)


@dataclasses.dataclass(frozen=True)
class PixelMaps:
  """A pixel's attention on the output grid and as heat images at the image size."""

  grid_pixel: tuple[int, int]
  loop1: np.ndarray  # (h, w) float64, sums to 1, zero off the pixel's row and column.
  effective: np.ndarray  # (h, w) float64, through all R loops composed.
  loop1_heat: np.ndarray  # (H, W, 3) uint8: the CLI figure's log heat scale.
  effective_heat: np.ndarray


def has_criss_cross(config) -> bool:
  """Whether a model config has criss-cross attention maps to show."""
  return config.head.attention == "criss_cross" and int(config.head.recurrence) > 0


class ExploredModel:
  """A saved model with its inference settings; thread-safe, programs kept per image size."""

  def __init__(
      self,
      model: str,
      *,
      settings: InferenceSettings = InferenceSettings(),
      dataset: str | None = None,
  ):
    """``model``: what ``load_model`` reads (a model directory, a run's checkpoints, a workdir);
    ``settings``: the inference of ``predict.py``, whose mode a request may change."""
    loaded = load_model(model)
    self.source = loaded.source
    self.config = loaded.config
    self.preprocessing = loaded.preprocessing
    self.dataset = dataset_for_model(loaded.num_classes, dataset)
    self.settings = settings
    self.has_attention = has_criss_cross(self.config)
    self._graphdef, self._state = nnx.split(loaded.model)
    self._programs: dict[tuple[int, int, str], Any] = {}
    self._compile_lock = threading.Lock()

  @property
  def recurrence(self) -> int:
    return int(self.config.head.recurrence) if self.has_attention else 0

  @property
  def compiled(self) -> list[tuple[int, int, str]]:
    """(height, width, mode) of every program compiled so far."""
    return sorted(self._programs)

  def metadata(self) -> dict[str, Any]:
    """What a client needs to read the outputs: classes, colours, the attention's loops."""
    return {
        "source": self.source,
        "name": str(self.config.name),
        "dataset": self.dataset.name,
        "num_classes": self.dataset.num_classes,
        "classes": [
            {"id": i, "name": name, "color": [int(c) for c in color]}
            for i, (name, color) in enumerate(
                zip(self.dataset.class_names, self.dataset.palette.tolist())
            )
        ],
        "attention": "criss_cross" if self.has_attention else None,
        "recurrence": self.recurrence,
        "preprocessing": self.preprocessing.to_json(),
        "modes": list(MODES),
        "default_mode": self.settings.mode,
        "crop_size": list(self.settings.crop_size),
        "overlap": self.settings.overlap,
        "heat_decades": HEAT_DECADES,
    }

  def _forward(self, state, images, *, mode: str):
    network = nnx.merge(self._graphdef, state, copy=True)
    network.eval()
    logits = predict_logits(
        lambda x: network(x)[0],
        images,
        num_classes=self.dataset.num_classes,
        settings=dataclasses.replace(self.settings, mode=mode),
    )
    labels = logits[0].argmax(-1).astype("uint8")  # As predict.py's.
    # The attention is that of the whole image, as in the CLI figure, in both modes.
    maps = network.attention_maps(images) if self.has_attention else []
    return labels, jax.nn.softmax(logits[0], axis=-1), [m[0] for m in maps]

  def _program(self, height: int, width: int, mode: str):
    key = (height, width, mode)
    if key in self._programs:  # Compiled sizes need not wait for another size's compile.
      return self._programs[key]
    with self._compile_lock:
      if key not in self._programs:
        images = jax.ShapeDtypeStruct((1, height, width, 3), np.float32)
        forward = jax.jit(functools.partial(self._forward, mode=mode))
        self._programs[key] = forward.lower(self._state, images).compile()
      return self._programs[key]

  def analyse(self, image: np.ndarray, mode: str | None = None) -> Analysis:
    """Labels, probabilities and attention weights of a uint8 (H, W, 3) RGB image."""
    mode = mode or self.settings.mode
    if mode not in MODES:
      raise ValueError(f"mode={mode!r} must be one of {', '.join(MODES)}.")
    program = self._program(image.shape[0], image.shape[1], mode)
    labels, probabilities, maps = program(self._state, self.preprocessing.normalize(image)[None])
    return Analysis(
        np.asarray(labels), np.asarray(probabilities), tuple(np.asarray(m) for m in maps)
    )


def pixel_maps(analysis: Analysis, pixel: tuple[int, int]) -> PixelMaps:
  """A pixel's loop-1 and effective weights (as the CLI figure draws them) from an analysis."""
  size = analysis.labels.shape
  maps = pixel_attention(analysis.attention, pixel, size)
  return PixelMaps(
      maps.grid_pixel,
      maps.loop1,
      maps.effective,
      heat(upsample(maps.loop1, size)),
      heat(upsample(maps.effective, size)),
  )


def heat_scale(width: int = 256, height: int = 12) -> np.ndarray:
  """(height, width, 3) uint8: the heat colours from 10^-decades of the maximum (left) to it."""
  values = np.logspace(-HEAT_DECADES, 0, width)
  return np.repeat(heat(values[None, :]), height, axis=0)


@functools.cache
def demo_scenes():
  """The synthetic demo's held-out evaluation scenes (generated, never downloaded)."""
  config = data_config("synthetic")
  return build_source(config, config.eval_split)
