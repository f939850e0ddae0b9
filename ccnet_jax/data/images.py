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
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageOps

# Modes whose pixels are 16-bit integers (I;16 in the file's byte order, or I holding 0..65535).
_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N", "I")


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
  """uint8 (H, W, 3) RGB of an image file (see :func:`rgb_array`); a file PIL cannot decode
  raises ValueError naming it."""
  try:
    with Image.open(path) as image:
      image.load()
  except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
    raise ValueError(f"cannot decode image {path}: {error}") from None
  return rgb_array(image, path)
