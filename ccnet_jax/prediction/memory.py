"""Whether a compiled program fits in the memory its device has free, known before it runs.

XLA's buffer assignment of a compiled program (``Compiled.memory_analysis()``) gives the bytes
of its arguments, outputs and temporaries; the device gives the bytes it has free: an
accelerator's allocator its limit less what is in use (``Device.memory_stats()``), the host
for a CPU the memory the system can still give this process (``MemAvailable`` of
``/proc/meminfo``, within the limit of the process's memory cgroup; psutil elsewhere).
"""

from __future__ import annotations

import os
from typing import Any

import jax

_CGROUP_ROOT = "/sys/fs/cgroup"
_UNLIMITED = 1 << 60  # cgroup v1 writes 'no limit' as a number near 2**63.


def program_bytes(compiled: Any, *, resident: int = 0) -> int:
  """The bytes ``compiled`` (a ``jax.stages.Compiled``) needs beyond ``resident`` bytes of its
  arguments that are already in the device's memory (a model's weights); 0 if XLA does not
  say."""
  stats = compiled.memory_analysis()
  if stats is None:
    return 0
  total = (
      stats.argument_size_in_bytes
      + stats.output_size_in_bytes
      + stats.temp_size_in_bytes
      - stats.alias_size_in_bytes
  )
  return max(int(total) - int(resident), 0)


def _read_number(path: str) -> int | None:
  try:
    with open(path, encoding="ascii") as f:
      text = f.read().strip()
  except OSError:
    return None
  return int(text) if text.isdigit() else None


def _cgroup_free() -> int | None:
  """The memory cgroup's limit less its usage (v2, else v1), None without a limit."""
  try:
    with open("/proc/self/cgroup", encoding="ascii") as f:
      lines = f.read().splitlines()
  except OSError:
    return None
  for line in lines:
    _, controllers, path = line.split(":", 2)
    if controllers == "":  # v2: the unified hierarchy.
      names, base = ("memory.max", "memory.current"), _CGROUP_ROOT
    elif "memory" in controllers.split(","):
      names, base = ("memory.limit_in_bytes", "memory.usage_in_bytes"), f"{_CGROUP_ROOT}/memory"
    else:
      continue
    # Inside a container the cgroup's own folder is usually mounted as the root.
    for folder in (base + path, base):
      limit, usage = (_read_number(os.path.join(folder, name)) for name in names)
      if limit is not None and usage is not None and limit < _UNLIMITED:
        return max(limit - usage, 0)
  return None


def _meminfo_available() -> int | None:
  try:
    with open("/proc/meminfo", encoding="ascii") as f:
      for line in f:
        if line.startswith("MemAvailable:"):
          return int(line.split()[1]) * 1024
  except (OSError, ValueError, IndexError):
    pass
  try:
    import psutil  # pylint: disable=g-import-not-at-top  (optional)
  except ImportError:
    return None
  return int(psutil.virtual_memory().available)


def host_free_bytes() -> int | None:
  """The memory the system can still give this process; None if it cannot be known."""
  known = [free for free in (_meminfo_available(), _cgroup_free()) if free is not None]
  return min(known) if known else None


def free_bytes(device: jax.Device) -> int | None:
  """The bytes ``device`` has free for a new program; None if it cannot be known."""
  try:
    stats = device.memory_stats()
  except Exception:  # pylint: disable=broad-except  (backends without statistics raise)
    stats = None
  if stats and "bytes_limit" in stats:
    return int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0))
  if device.platform == "cpu":
    return host_free_bytes()
  return None


def gigabytes(size: int) -> str:
  return f"{size / 1e9:.1f} GB" if size >= 1e8 else f"{size / 1e6:.0f} MB"
