"""Image files as the network sees them: uint8 RGB, upright, 8 bits a channel.

Every reader of a user's image (prediction, the attention figure, the explorer, the folder
datasets) decodes through :func:`rgb_array`, so a file gives the same pixels everywhere:

* the EXIF orientation is applied (a phone's portrait photo stored sideways is read upright,
  as every viewer shows it);
* 16-bit pixels are scaled to 8 bits by their high byte, for every mode: PIL does so for RGB,
  RGBA and grey + alpha, and would clip 16-bit grey (mode ``I;16``, or ``I`` from 16-bit
  PGM) to white;
* images PIL cannot turn into 8 bits faithfully (32-bit integer or floating-point pixels) are
  refused with one line.

The pixels are PIL's; 8-bit RGB PNGs are decoded by libspng and complete RGB or grey JPEGs by
OpenCV's libjpeg-turbo, which give the same pixels in a fraction of the time
(benchmarks/input_pipeline.py), when the file holds no EXIF orientation to apply.
"""

from __future__ import annotations

import io

import cv2
import numpy as np
import pyspng
from PIL import Image, ImageOps

# Modes whose pixels are 16-bit integers (I;16 in the file's byte order, or I holding 0..65535).
_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N", "I")
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_EXIF = b"eXIf"
_JPEG_END = b"\xff\xd9"
_ORIENTATION = 0x0112  # The EXIF tag; 1 is upright as stored.


def png_layout(data: bytes) -> tuple[int, int] | None:
  """(bit depth, colour type) from a PNG's IHDR, or None for anything else."""
  if data[:8] != _PNG_SIGNATURE or data[12:16] != b"IHDR" or len(data) < 26:
    return None
  return data[24], data[25]


def _high_byte(image: Image.Image, source: str) -> Image.Image:
  """A 16-bit grey image as 8-bit grey, each pixel's high byte (as PIL scales 16-bit RGB)."""
  values = np.asarray(image)
  if values.size and (values.min() < 0 or values.max() > 65535):
    raise ValueError(
        f"{source} holds 32-bit integer pixels ({values.min()}..{values.max()}); save it as an"
        " 8- or 16-bit image."
    )
  return Image.fromarray((values.astype(np.uint32) >> 8).astype(np.uint8), mode="L")


def rgb_array(image: Image.Image, source: str = "the image") -> np.ndarray:
  """uint8 (H, W, 3) RGB of a PIL image, upright and scaled to 8 bits (see the module
  docstring); ``source`` names the file in a ValueError."""
  image = ImageOps.exif_transpose(image)
  if image.mode in _SIXTEEN_BIT:
    image = _high_byte(image, source)
  elif image.mode == "F":
    raise ValueError(
        f"{source} holds floating-point pixels, whose range is unknown; save it as an 8- or"
        " 16-bit image."
    )
  return np.asarray(image.convert("RGB"))


def read_image(path: str) -> np.ndarray:
  """uint8 (H, W, 3) RGB of an image file (see the module docstring); a file that cannot be
  decoded raises ValueError naming it."""
  try:
    with open(path, "rb") as f:
      data = f.read()
    if png_layout(data) == (8, 2) and _PNG_EXIF not in data:
      return pyspng.load(data, "RGB")
    with Image.open(io.BytesIO(data)) as image:
      # A truncated JPEG lacks its end marker: PIL refuses it where libjpeg would fill it in.
      if (
          image.format == "JPEG"
          and image.mode in ("RGB", "L")
          and data.endswith(_JPEG_END)
          and image.getexif().get(_ORIENTATION, 1) == 1
      ):
        flags = cv2.IMREAD_COLOR_RGB | cv2.IMREAD_IGNORE_ORIENTATION
        decoded = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
        if decoded is not None:
          return decoded
      image.load()
  except (OSError, SyntaxError, ValueError, RuntimeError, Image.DecompressionBombError) as error:
    raise ValueError(f"cannot decode image {path}: {error}") from None
  return rgb_array(image, path)
