"""``predict.py``'s job: label the images and videos that arguments name, writing files.

Images are read, grouped into batches of one size, labelled by a predictor and written as
colour PNGs and overlays (label-id PNGs if asked); videos frame by frame into MP4 files. A
predictor is anything with ``batch_size``, ``dataset`` (a ``DatasetInfo``) and
``__call__(images) -> labels``, as :class:`ccnet_jax.prediction.predictor.Predictor` has.
"""

from __future__ import annotations

import functools
import os
import sys
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
from PIL import Image
from tqdm import tqdm

from ccnet_jax.data.folders import read_image
from ccnet_jax.data.labels import DatasetInfo, train_id_to_label_id
from ccnet_jax.evaluation.png import colorize, overlay, save_predictions
from ccnet_jax.prediction import media

ON_ERROR = ("stop", "skip")


class Outputs:
  """Writes what one prediction produces: colour PNGs, overlays, optional label-id PNGs."""

  def __init__(self, out_dir: str, dataset: DatasetInfo, *, label_ids: bool = False):
    self.out_dir = out_dir
    self.palette = dataset.palette
    self.label_id_table = train_id_to_label_id(dataset.name) if label_ids else None

  def image(self, name: str, image: np.ndarray, labels: np.ndarray) -> list[str]:
    """``<name>_pred.png``, ``<name>_overlay.png`` and, if asked, ``<name>_labelIds.png``."""
    paths = save_predictions(self.out_dir, name, image, labels, None, self.palette)
    if self.label_id_table is not None:
      paths.append(self.label_ids(os.path.join(self.out_dir, f"{name}_labelIds.png"), labels))
    return paths

  def label_ids(self, path: str, labels: np.ndarray) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(self.label_id_table[labels]).save(path)
    return path

  def video(self, name: str, fps: float) -> "_VideoOutputs":
    return _VideoOutputs(self, name, fps)


class _VideoOutputs:
  """``<name>_pred.mp4`` and ``<name>_overlay.mp4``, and ``<name>_labelIds/NNNNNN.png`` if asked."""

  def __init__(self, outputs: Outputs, name: str, fps: float):
    self._outputs = outputs
    stem = os.path.join(outputs.out_dir, name)
    self.paths = [f"{stem}_pred.mp4", f"{stem}_overlay.mp4"]
    self._label_dir = f"{stem}_labelIds" if outputs.label_id_table is not None else None
    self._writers = [media.video_writer(path, fps) for path in self.paths]
    self.frames = 0

  def add(self, frame: np.ndarray, labels: np.ndarray) -> None:
    color = colorize(labels, self._outputs.palette)
    self._writers[0].append_data(color)
    self._writers[1].append_data(overlay(frame, color))
    if self._label_dir:
      self._outputs.label_ids(os.path.join(self._label_dir, f"{self.frames:06d}.png"), labels)
    self.frames += 1

  def close(self) -> None:
    for writer in self._writers:
      writer.close()


def _same_size_batches(
    items: Iterable[tuple[media.Input, np.ndarray]], batch_size: int
) -> Iterator[list[tuple[media.Input, np.ndarray]]]:
  """Consecutive items grouped while they share an image size, at most ``batch_size`` each."""
  batch: list = []
  for item in items:
    if batch and (len(batch) == batch_size or batch[0][1].shape != item[1].shape):
      yield batch
      batch = []
    batch.append(item)
  if batch:
    yield batch


class _ErrorPolicy:
  """'stop' re-raises an input's error; 'skip' prints it as one line and goes on."""

  def __init__(self, on_error: str):
    if on_error not in ON_ERROR:
      raise ValueError(f"--on_error={on_error!r} must be one of {ON_ERROR}.")
    self.on_error = on_error
    self.skipped: list[str] = []

  def run(self, action: Callable[[], object]):
    try:
      return action()
    except (ValueError, FileNotFoundError) as error:
      if self.on_error == "stop":
        raise
      tqdm.write(f"skipped: {error}", file=sys.stderr)  # Above a progress bar, if one runs.
      self.skipped.append(str(error))
      return None


def gather_inputs(arguments: Sequence[str], policy: _ErrorPolicy) -> list[media.Input]:
  inputs = []
  for argument in arguments:
    inputs.extend(policy.run(lambda: media.expand_argument(argument)) or [])
  media.check_unique_names(inputs)
  if not inputs:
    raise ValueError("No input to predict: give image files, folders, glob patterns or videos.")
  return inputs


def predict_images(predictor, outputs, images, policy, progress=True) -> int:
  """Predicts and writes every image input; returns how many were written."""

  def readable():
    for item in images:
      image = policy.run(functools.partial(read_image, item.path))
      bar.update(image is None)
      if image is not None:
        yield item, image

  written = 0
  with tqdm(total=len(images), desc="images", unit="img", disable=not progress) as bar:
    for batch in _same_size_batches(readable(), predictor.batch_size):
      for (item, image), labels in zip(batch, predictor([image for _, image in batch])):
        outputs.image(item.name, image, labels)
        written += 1
        bar.update(1)
  return written


def predict_video(predictor, outputs, item: media.Input, progress=True) -> int:
  """Predicts a video frame by frame; returns the number of frames written."""
  count, fps = media.video_info(item.path)
  writer = outputs.video(item.name, fps)
  try:
    with tqdm(
        total=count, desc=os.path.basename(item.path), unit="frame", disable=not progress
    ) as bar:
      frames = media.video_frames(item.path)
      while chunk := [frame for _, frame in zip(range(predictor.batch_size), frames)]:
        for frame, labels in zip(chunk, predictor(chunk)):
          writer.add(frame, labels)
        bar.update(len(chunk))
  finally:
    writer.close()
  return writer.frames


def predict_paths(
    predictor,
    arguments: Sequence[str],
    out_dir: str,
    *,
    label_ids: bool = False,
    on_error: str = "stop",
    progress: bool = True,
) -> dict[str, int]:
  """Predicts every image and video the arguments name, writing into ``out_dir``.

  Returns counts: {'images', 'videos', 'frames', 'skipped'}.
  """
  policy = _ErrorPolicy(on_error)
  inputs = gather_inputs(arguments, policy)
  outputs = Outputs(out_dir, predictor.dataset, label_ids=label_ids)
  images = [item for item in inputs if not item.is_video]
  counts = {
      "images": predict_images(predictor, outputs, images, policy, progress),
      "videos": 0,
      "frames": 0,
  }
  for item in (item for item in inputs if item.is_video):
    frames = policy.run(functools.partial(predict_video, predictor, outputs, item, progress))
    if frames is not None:
      counts["videos"] += 1
      counts["frames"] += frames
  counts["skipped"] = len(policy.skipped)
  return counts
