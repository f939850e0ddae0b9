"""A split stored decoded: uint8 images and train-id labels in one ArrayRecord file.

Reading an example's decoded arrays costs a few milliseconds of CPU where decoding its PNGs
costs tens (benchmarks/input_pipeline.py), so a host that feeds many accelerators reads these
files (``data.decoded_dir``) instead of the dataset's images. ``python -m ccnet_jax.data`` writes
them. A record is one example: a header (height, width, bytes of the name), the name in UTF-8,
the image's (H, W, 3) bytes and the label's (H, W) bytes. Records are stored uncompressed and
one per chunk (``group_size:1``), so that an example is read alone and without decompressing
(zstd:1 shrinks a Cityscapes example only 1.5x and more than doubles its read time).
"""

from __future__ import annotations

import os
import struct
from typing import Callable

import grain.python as grain
import numpy as np
from array_record.python.array_record_module import ArrayRecordWriter

WRITER_OPTIONS = "group_size:1,uncompressed"
_HEADER = struct.Struct("<III")  # height, width, length of the name in bytes


def split_file(directory: str, dataset: str, split: str) -> str:
  """Where ``split`` of ``dataset`` is stored in ``directory``."""
  return os.path.join(directory, f"{dataset}-{split}.array_record")


def encode(example: dict) -> bytes:
  """One example of a source ({'image', 'label', 'name'}) as a record."""
  image, label = np.asarray(example["image"]), np.asarray(example["label"])
  name = example["name"].encode("utf-8")
  if image.dtype != np.uint8 or label.dtype != np.uint8 or image.ndim != 3:
    raise ValueError(
        f"example {example['name']!r}: expected a uint8 (H, W, 3) image and uint8 (H, W) label,"
        f" got {image.dtype} {image.shape} and {label.dtype} {label.shape}."
    )
  if image.shape != (*label.shape, 3):
    raise ValueError(
        f"example {example['name']!r}: image {image.shape} and label {label.shape} differ in size."
    )
  height, width = label.shape
  return b"".join((_HEADER.pack(height, width, len(name)), name, image.tobytes(), label.tobytes()))


def decode(record: bytes) -> dict:
  """The example of :func:`encode`; its arrays are read-only views of ``record``."""
  height, width, name_length = _HEADER.unpack_from(record)
  start = _HEADER.size + name_length
  pixels = height * width
  image = np.frombuffer(record, np.uint8, pixels * 3, start).reshape(height, width, 3)
  label = np.frombuffer(record, np.uint8, pixels, start + pixels * 3).reshape(height, width)
  name = record[_HEADER.size : start].decode("utf-8")
  return {"image": image, "label": label, "name": name}


def write_split(source, path: str, *, progress: Callable[[int, int], None] | None = None) -> int:
  """Writes every example of ``source`` to ``path``, whole or not at all; returns the count.

  The records go to a temporary file beside ``path`` that is renamed to it once complete, so
  an interrupted conversion leaves no file a loader could take for a split.
  """
  partial = f"{path}.{os.getpid()}.partial"
  writer = ArrayRecordWriter(partial, WRITER_OPTIONS)
  try:
    for index in range(len(source)):
      writer.write(encode(source[index]))
      if progress:
        progress(index + 1, len(source))
    writer.close()
    os.replace(partial, path)
  except BaseException:
    writer.close()
    if os.path.exists(partial):
      os.remove(partial)
    raise
  return len(source)


class DecodedSplit:
  """A source (``__len__``, ``__getitem__`` -> {'image', 'label', 'name'}) over a file of
  :func:`write_split`; it pickles to grain's worker processes, which reopen the file."""

  def __init__(self, path: str):
    self.path = path
    try:
      self._records = grain.ArrayRecordDataSource([path])
    except RuntimeError as error:  # A truncated copy, another file under the name.
      reason = (str(error).strip() or "unreadable").splitlines()[0]
      raise ValueError(
          f"{path} is not a whole split file ({reason}); write it again with "
          "python -m ccnet_jax.data."
      ) from None

  def __len__(self) -> int:
    return len(self._records)

  def __getitem__(self, index: int) -> dict:
    return decode(self._records[index])

  def __repr__(self) -> str:
    return f"DecodedSplit({self.path!r})"
