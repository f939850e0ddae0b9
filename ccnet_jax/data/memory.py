"""Keeps freed memory in the process for the next example instead of handing it back.

glibc serves an allocation above its mmap threshold (a decoded image, a record of a split
stored decoded) with fresh pages from the kernel and returns them when it is freed, so every
example pays for faulting in and zeroing its buffers again: reading one decoded Cityscapes
record took ~6,100 page faults and three quarters of its CPU time that way
(benchmarks/input_pipeline.py). With higher thresholds the loader's process reuses the blocks.
"""

from __future__ import annotations

import ctypes
import ctypes.util

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD = 64 << 20  # Larger blocks than this still come from (and go back to) mmap.
_TRIM_THRESHOLD = 256 << 20  # Free memory kept at the top of the heap before it is returned.


def keep_freed_memory() -> bool:
  """Raises glibc's mmap and trim thresholds for this process; False where there is no glibc."""
  try:
    mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
  except (OSError, AttributeError):
    return False
  return bool(
      mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD) and mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD)
  )
