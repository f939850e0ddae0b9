"""``predict.py``'s job: label the images and videos that arguments name, writing files.

Images are read, grouped into batches of one size, labelled by a predictor and written as
colour PNGs and overlays (label-id PNGs if asked); videos frame by frame into MP4 files. A
predictor is anything with ``batch_size``, ``dataset`` (a ``DatasetInfo``) and
``__call__(images) -> labels``, as :class:`ccnet_jax.prediction.predictor.Predictor` has.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
from tqdm import tqdm

from ccnet_jax import atomic
from ccnet_jax.data.images import read_image
from ccnet_jax.data.labels import DatasetInfo, train_id_to_label_id
from ccnet_jax.evaluation.png import colorize, overlay, save_png, save_predictions
from ccnet_jax.prediction import media

ON_ERROR = ("stop", "skip")


# What predict.py writes for an input named NAME: NAME + one of these, and NAME_labelIds/ for
# the label-id frames of a video.
OUTPUT_SUFFIXES = ("_pred.png", "_overlay.png", "_labelIds.png", "_pred.mp4", "_overlay.mp4")
LABEL_ID_FRAMES = "_labelIds"


class Outputs:
  """Writes what one prediction produces: colour PNGs, overlays, optional label-id PNGs.

  Every file is written whole or not at all (``ccnet_jax.atomic``).
  """

  def __init__(self, out_dir: str, dataset: DatasetInfo, *, label_ids: bool = False):
    self.out_dir = out_dir
    self.palette = dataset.palette
    self.label_id_table = train_id_to_label_id(dataset.name) if label_ids else None

  def owns(self, path: str) -> bool:
    """Whether ``path`` is one of this command's outputs in ``out_dir`` (from an earlier run):
    a folder or a pattern that reaches ``out_dir`` does not predict them again."""
    relative = os.path.relpath(os.path.abspath(path), os.path.abspath(self.out_dir))
    if relative.startswith(os.pardir + os.sep) or relative == os.pardir:
      return False
    parent = os.path.basename(os.path.dirname(relative))
    return os.path.basename(path).endswith(OUTPUT_SUFFIXES) or parent.endswith(LABEL_ID_FRAMES)

  def image(self, name: str, image: np.ndarray, labels: np.ndarray) -> list[str]:
    """``<name>_pred.png``, ``<name>_overlay.png`` and, if asked, ``<name>_labelIds.png``."""
    paths = save_predictions(self.out_dir, name, image, labels, None, self.palette)
    if self.label_id_table is not None:
      path = os.path.join(self.out_dir, f"{name}_labelIds.png")
      save_png(path, self.label_id_table[labels])
      paths.append(path)
    return paths

  def video(self, name: str, fps: float, stack: contextlib.ExitStack) -> "_VideoOutputs":
    """The writers of a video's outputs; ``stack`` renames them into place when it closes
    normally, and deletes them when it closes on an exception."""
    return _VideoOutputs(self, name, fps, stack)


class _VideoOutputs:
  """``<name>_pred.mp4`` and ``<name>_overlay.mp4``, and ``<name>_labelIds/NNNNNN.png`` if asked."""

  def __init__(self, outputs: Outputs, name: str, fps: float, stack: contextlib.ExitStack):
    self._outputs = outputs
    stem = os.path.join(outputs.out_dir, name)
    self.paths = [f"{stem}_pred.mp4", f"{stem}_overlay.mp4"]
    self._label_dir = None
    if outputs.label_id_table is not None:
      self._label_dir = stack.enter_context(
          atomic.replacing_directory(stem + LABEL_ID_FRAMES, overwrite=True)
      )
    temporaries = [stack.enter_context(atomic.writing(path)) for path in self.paths]
    # Entered last, closed first: ffmpeg finishes each file before it is renamed or deleted.
    self._writers = [stack.enter_context(media.video_writer(path, fps)) for path in temporaries]
    self.frames = 0

  def add(self, frame: np.ndarray, labels: np.ndarray) -> None:
    color = colorize(labels, self._outputs.palette)
    self._writers[0].append_data(color)
    self._writers[1].append_data(overlay(frame, color))
    if self._label_dir:
      path = os.path.join(self._label_dir, f"{self.frames:06d}.png")
      save_png(path, self._outputs.label_id_table[labels])
    self.frames += 1


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


def gather_inputs(
    arguments: Sequence[str], policy: _ErrorPolicy, skip: Callable[[str], bool]
) -> list[media.Input]:
  """The inputs the arguments name, less those ``skip`` excludes (see ``media.expand_argument``)."""
  inputs = []
  for argument in arguments:
    inputs.extend(policy.run(lambda: media.expand_argument(argument, skip)) or [])
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
  """Predicts a video frame by frame; returns the number of frames written.

  A video that decodes to fewer frames than its container declares (cut short) is written
  with the frames that decode, and said so in one line.
  """
  info = media.video_info(item.path)
  with contextlib.ExitStack() as stack:
    writer = outputs.video(item.name, info.fps, stack)
    with tqdm(
        total=info.declared_frames,
        desc=os.path.basename(item.path),
        unit="frame",
        disable=not progress,
    ) as bar:
      frames = media.video_frames(item.path)
      while chunk := [frame for _, frame in zip(range(predictor.batch_size), frames)]:
        for frame, labels in zip(chunk, predictor(chunk)):
          writer.add(frame, labels)
        bar.update(len(chunk))
  if media.cut_short(writer.frames, info.declared_frames):
    tqdm.write(
        f"warning: {item.path} is cut short: {writer.frames} of the {info.declared_frames}"
        f" frames its duration declares could be read; its outputs hold those {writer.frames}.",
        file=sys.stderr,
    )
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
  atomic.make_folder(out_dir, "--out")
  outputs = Outputs(out_dir, predictor.dataset, label_ids=label_ids)
  inputs = gather_inputs(arguments, policy, skip=outputs.owns)
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
