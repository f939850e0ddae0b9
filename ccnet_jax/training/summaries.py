"""What a run reports: a progress line on stdout, TensorBoard events and a JSON-lines file.

Only process 0 writes (other processes get a writer that does nothing), so a
multi-host run produces one set of logs. TensorBoard events go through tensorboardX,
which needs no TensorFlow at write time.
"""

from __future__ import annotations

import datetime
import json
import os
import sys
import time
from typing import Mapping

import jax
import numpy as np


def _drop_records_after(path: str, step: int) -> None:
  """Removes the records of steps after ``step`` from the JSON-lines file ``path``.

  A run killed between checkpoints had logged steps that its resumed run repeats;
  only the resumed run's records of those steps are kept.
  """
  if not os.path.exists(path):
    return
  with open(path, encoding="utf-8") as f:
    lines = f.readlines()
  kept = []
  for line in lines:
    try:
      record_step = json.loads(line)["step"]
    except (ValueError, KeyError, TypeError):
      continue  # A line cut short by a kill.
    if record_step <= step:
      kept.append(line if line.endswith("\n") else line + "\n")
  if len(kept) == len(lines):
    return
  staging = path + ".tmp"
  with open(staging, "w", encoding="utf-8") as f:
    f.writelines(kept)
  os.replace(staging, path)


class MetricWriter:
  """Scalars to ``metrics.jsonl`` and TensorBoard, images to TensorBoard, in ``workdir``.

  ``start_step`` is the step the run (re)starts from: records of later steps, logged by
  an earlier invocation that was killed before its next checkpoint, are dropped.
  """

  def __init__(
      self, workdir: str | os.PathLike, *, start_step: int = 0, enabled: bool | None = None
  ):
    self.enabled = jax.process_index() == 0 if enabled is None else enabled
    self._jsonl = None
    self._tensorboard = None
    if self.enabled:
      from tensorboardX import SummaryWriter

      os.makedirs(workdir, exist_ok=True)
      path = os.path.join(workdir, "metrics.jsonl")
      _drop_records_after(path, start_step)
      self._jsonl = open(path, "a", encoding="utf-8")
      self._tensorboard = SummaryWriter(
          os.path.join(workdir, "tensorboard"), purge_step=start_step + 1
      )

  def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
    if not self.enabled:
      return
    record = {"step": int(step), **{k: float(v) for k, v in scalars.items()}}
    self._jsonl.write(json.dumps(record) + "\n")
    self._jsonl.flush()
    for name, value in scalars.items():
      self._tensorboard.add_scalar(name, float(value), int(step))

  def write_images(self, step: int, images: Mapping[str, np.ndarray]) -> None:
    """``images``: name -> uint8 (H, W, 3)."""
    if not self.enabled:
      return
    for name, image in images.items():
      self._tensorboard.add_image(name, np.asarray(image), int(step), dataformats="HWC")

  def close(self) -> None:
    if self.enabled:
      self._jsonl.close()
      self._tensorboard.close()


class ProgressLine:
  """``step 120/600 [#####.....] loss 0.432 lr 8.1e-03 12.3 img/s ETA 0:04:12``."""

  def __init__(
      self, total_steps: int, batch_size: int, *, enabled: bool | None = None, stream=None
  ):
    self.total_steps = total_steps
    self.batch_size = batch_size
    self.enabled = jax.process_index() == 0 if enabled is None else enabled
    self._stream = stream or sys.stdout
    self._last_time = None
    self._last_step = None

  def update(self, step: int, scalars: Mapping[str, float]) -> str:
    now = time.perf_counter()
    rate = 0.0
    if self._last_time is not None and step > self._last_step:
      rate = (step - self._last_step) / (now - self._last_time)
    self._last_time, self._last_step = now, step
    done = int(20 * step / max(self.total_steps, 1))
    eta = datetime.timedelta(seconds=int((self.total_steps - step) / rate)) if rate else "?"
    line = (
        f"step {step}/{self.total_steps} [{'#' * done}{'.' * (20 - done)}]"
        f" loss {scalars['loss']:.4f} lr {scalars['lr']:.2e}"
        f" {rate * self.batch_size:.1f} img/s ETA {eta}"
    )
    if self.enabled:
      print(line, file=self._stream, flush=True)
    return line
