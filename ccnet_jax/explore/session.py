"""What the explorer's requests ask, answered without the web: decode, analyse once, read back.

An image is named by the SHA-256 of its bytes and the inference mode; its analysis (labels,
probabilities, attention weights) is computed once, shared by the requests that ask for it at
the same time, and kept in a cache bounded in bytes, so a click on a pixel costs a few numpy
products, not a network pass. Nothing here is per-client state: two requests can only share
an analysis of the same bytes, which is the same answer.
"""

from __future__ import annotations

import base64
import collections
import concurrent.futures
import dataclasses
import hashlib
import io
import threading
from typing import Any, Callable

import numpy as np
from PIL import Image

from ccnet_jax.explore.backend import MODES, Analysis, ExploredModel, pixel_maps, rgb_array


class RequestError(Exception):
  """A bad request: the HTTP status and one sentence that says what to change."""

  def __init__(self, status: int, message: str):
    super().__init__(message)
    self.status = status
    self.message = message


_FORMATS = "PNG, JPEG, BMP, TIFF, WebP, ..."


@dataclasses.dataclass(frozen=True)
class Limits:
  max_bytes: int = 32 * 2**20  # Of an uploaded file.
  max_pixels: int = 4096 * 4096  # Of a decoded image.
  cache_bytes: int = 2**30  # Of the kept analyses (the newest is always kept).


def decode_image(data: bytes, limits: Limits) -> np.ndarray:
  """uint8 (H, W, 3) RGB from the bytes of an image file; RequestError when it is not one."""
  if not data:
    raise RequestError(400, "no image in the request body: send the bytes of an image file.")
  if len(data) > limits.max_bytes:
    raise RequestError(413, too_large(len(data), limits.max_bytes))
  try:
    with Image.open(io.BytesIO(data)) as image:
      width, height = image.size
      if width * height > limits.max_pixels:
        raise RequestError(413, _too_many_pixels(f"{width}x{height}", limits))
      image.load()
  except Image.DecompressionBombError:  # Past PIL's own limit, before the size is known.
    raise RequestError(413, _too_many_pixels("larger than PIL decodes", limits)) from None
  except Image.UnidentifiedImageError:
    raise RequestError(400, f"the request body is not an image file ({_FORMATS}).") from None
  except (OSError, SyntaxError, ValueError) as error:
    raise RequestError(400, f"the request body is a damaged image file: {error}.") from None
  try:  # Upright (EXIF orientation), 8 bits a channel: as predict.py reads the same file.
    return rgb_array(image, "the uploaded image")
  except ValueError as error:
    raise RequestError(400, str(error)) from None


def _too_many_pixels(size: str, limits: Limits) -> str:
  return (
      f"the image is {size} pixels, over the limit of {limits.max_pixels / 1e6:.1f} megapixels"
      " (--max_megapixels)."
  )


def _bytes(size: int) -> str:
  if size >= 2**20:
    return f"{size / 2**20:.1f} MiB"
  return f"{size / 2**10:.0f} KiB" if size >= 2**10 else f"{size} bytes"


def too_large(size: int, max_bytes: int) -> str:
  return f"the upload of {_bytes(size)} is over the limit of {_bytes(max_bytes)} (--max_upload_mb)."


def encode_png(array: np.ndarray) -> bytes:
  buffer = io.BytesIO()
  Image.fromarray(array).save(buffer, format="PNG")
  return buffer.getvalue()


def png_data_url(array: np.ndarray) -> str:
  return "data:image/png;base64," + base64.b64encode(encode_png(array)).decode("ascii")


def parse_pixel(y: str | None, x: str | None, height: int, width: int) -> tuple[int, int]:
  """(y, x) from the query's text, inside the image; RequestError naming what is wrong."""
  if y is None or x is None:
    raise RequestError(400, "give the pixel as ?y=ROW&x=COLUMN (integers, 0 at the top left).")
  try:
    pixel = int(y), int(x)
  except ValueError:
    raise RequestError(400, f"pixel y={y!r}, x={x!r}: both must be integers.") from None
  if not (0 <= pixel[0] < height and 0 <= pixel[1] < width):
    raise RequestError(
        400,
        f"pixel y={pixel[0]}, x={pixel[1]} lies outside the {height}x{width} image (rows"
        f" 0..{height - 1}, columns 0..{width - 1}).",
    )
  return pixel


class _Cache:
  """Analyses by key, least recently used first out past a byte budget; each computed once
  even when several threads ask for it together."""

  def __init__(self, max_bytes: int):
    self.max_bytes = max_bytes
    self.computed = 0  # How many analyses were computed: a click must not add one.
    self._done: collections.OrderedDict[Any, Analysis] = collections.OrderedDict()
    self._running: dict[Any, concurrent.futures.Future] = {}
    self._lock = threading.Lock()

  def get(self, key, compute: Callable[[], Analysis]) -> Analysis:
    with self._lock:
      if key in self._done:
        self._done.move_to_end(key)
        return self._done[key]
      future = self._running.get(key)
      owner = future is None
      if owner:
        future = self._running[key] = concurrent.futures.Future()
    if not owner:
      return future.result()
    try:
      value = compute()
    except BaseException as error:
      with self._lock:
        del self._running[key]
      future.set_exception(error)
      raise
    with self._lock:
      del self._running[key]
      self.computed += 1
      self._done[key] = value
      while len(self._done) > 1 and sum(a.nbytes for a in self._done.values()) > self.max_bytes:
        self._done.popitem(last=False)
    future.set_result(value)
    return value


class Explorer:
  """The answers of the HTTP API for one model."""

  def __init__(self, model: ExploredModel, limits: Limits = Limits()):
    self.model = model
    self.limits = limits
    self._cache = _Cache(limits.cache_bytes)

  @property
  def analyses_computed(self) -> int:
    return self._cache.computed

  def _mode(self, mode: str | None) -> str:
    mode = mode or self.model.settings.mode
    if mode not in MODES:
      raise RequestError(400, f"mode={mode!r} is not one of {', '.join(MODES)}.")
    return mode

  def analysis(self, data: bytes, mode: str | None = None) -> Analysis:
    """The analysis of an uploaded file, decoded and computed only the first time."""
    mode = self._mode(mode)
    key = (hashlib.sha256(data).hexdigest(), mode)
    return self._cache.get(key, lambda: self.model.analyse(decode_image(data, self.limits), mode))

  def predict(self, data: bytes, mode: str | None = None) -> np.ndarray:
    """(H, W) uint8 class ids of an uploaded image."""
    return self.analysis(data, mode).labels

  def predict_json(self, data: bytes, mode: str | None = None) -> dict[str, Any]:
    mode = self._mode(mode)
    labels = self.predict(data, mode)
    return {
        "height": int(labels.shape[0]),
        "width": int(labels.shape[1]),
        "mode": mode,
        "labels": labels.tolist(),
        "model": self.model.metadata(),
    }

  def attention(
      self, data: bytes, y: str | None, x: str | None, mode: str | None = None
  ) -> dict[str, Any]:
    """A pixel's class probabilities and attention maps (grid numbers and heat images)."""
    if not self.model.has_attention:
      raise RequestError(
          400,
          "this model has no criss-cross attention (model.head.attention is not 'criss_cross'"
          " or its recurrence is 0): there are no maps to show; /predict still works.",
      )
    mode = self._mode(mode)
    analysis = self.analysis(data, mode)
    pixel = parse_pixel(y, x, *analysis.labels.shape)
    maps = pixel_maps(analysis, pixel)
    probabilities = analysis.probabilities[pixel]
    return {
        "pixel": list(pixel),
        "image_size": list(analysis.labels.shape),
        "grid_pixel": list(maps.grid_pixel),
        "grid_size": list(maps.loop1.shape),
        "mode": mode,
        "label": int(analysis.labels[pixel]),
        "probabilities": [float(p) for p in probabilities],
        "recurrence": self.model.recurrence,
        "loop1": maps.loop1.tolist(),
        "effective": maps.effective.tolist(),
        "heat": {
            "loop1": png_data_url(maps.loop1_heat),
            "effective": png_data_url(maps.effective_heat),
        },
    }
