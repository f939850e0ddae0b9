"""``predict.py``'s job: label the user's images and videos with a trained or converted model.

The model is a model directory (``model.json`` + ``params/``) or a training workdir, whose
exported model (``model/``, else ``best/``) is used. Inference is evaluation's
(:func:`ccnet_jax.evaluation.inference.predict_logits`): whole image or sliding windows,
optionally several scales and flips, on images of any size.
"""

from __future__ import annotations

import functools
import os
import sys
from typing import Callable, Iterable, Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image
from tqdm import tqdm

from ccnet_jax.data.folders import read_image
from ccnet_jax.data.labels import DATASET_NAMES, DatasetInfo, dataset_info, train_id_to_label_id
from ccnet_jax.data.transforms import normalize
from ccnet_jax.evaluation import media
from ccnet_jax.evaluation.evaluator import model_predict_fn
from ccnet_jax.evaluation.inference import MODES, predict_logits
from ccnet_jax.evaluation.visualize import colorize, overlay, save_predictions
from ccnet_jax.models.model_dir import load_model

# Where a training run exports its models, in the order they are preferred.
WORKDIR_MODELS = ("model", "best")
ON_ERROR = ("stop", "skip")


def resolve_model_dir(path: str) -> str:
  """``path`` if it is a model directory, else the model a training workdir exported."""
  for candidate in (path, *(os.path.join(path, name) for name in WORKDIR_MODELS)):
    if os.path.isfile(os.path.join(candidate, "model.json")):
      return candidate
  if not os.path.isdir(path):
    raise FileNotFoundError(f"--model={path}: no such directory.")
  raise FileNotFoundError(
      f"--model={path}: not a model directory (no model.json) and not a training workdir with"
      f" an exported model ({' or '.join(WORKDIR_MODELS)}/); finish the training run (rerun"
      " python train.py with this workdir) or convert a checkpoint (python -m ccnet_jax.convert)."
  )


def dataset_for_model(num_classes: int, name: str | None = None) -> DatasetInfo:
  """The dataset whose palette and label ids a model's outputs use: ``name``, or the one
  known dataset with ``num_classes`` classes."""
  if name:
    info = dataset_info(name)
    if info.num_classes != num_classes:
      raise ValueError(
          f"--dataset={name} has {info.num_classes} classes but the model predicts"
          f" {num_classes}; pass the dataset the model was trained on."
      )
    return info
  matches = [dataset_info(n) for n in DATASET_NAMES if dataset_info(n).num_classes == num_classes]
  if len(matches) != 1:
    raise ValueError(
        f"The model predicts {num_classes} classes, which names no single known dataset;"
        f" pass --dataset (one of {', '.join(DATASET_NAMES)})."
    )
  return matches[0]


class Predictor:
  """A loaded model with fixed inference settings: uint8 RGB images in, train ids out."""

  def __init__(
      self,
      model: str,
      *,
      dataset: str | None = None,
      mode: str = "whole",
      crop_size: Sequence[int] = (769, 769),
      overlap: float = 1 / 3,
      scales: Sequence[float] = (1.0,),
      flip: bool = False,
      batch_size: int = 1,
      dtype: str | None = None,
  ):
    """Loads ``model`` (a model directory or a training workdir).

    Args:
      model: model directory or workdir (see :func:`resolve_model_dir`).
      dataset: palette / label-id convention; default: inferred from the class count.
      mode, crop_size, overlap, scales, flip: as in :func:`predict_logits`.
      batch_size: images of one size predicted together; a short batch is padded so
        every batch of a size reuses one compiled program.
      dtype: computation dtype ('bfloat16', ...); default: the model's.
    """
    _check_settings(mode, crop_size, overlap, scales, batch_size)
    self.model_dir = resolve_model_dir(model)
    network, info = load_model(self.model_dir, dtype=dtype)
    self.preprocessing = info["preprocessing"]
    self.dataset = dataset_for_model(info["model"].num_classes, dataset)
    self.batch_size = int(batch_size)
    predict_fn, self._state = model_predict_fn(network)
    infer = functools.partial(
        predict_logits,
        num_classes=self.dataset.num_classes,
        mode=mode,
        crop_size=tuple(int(c) for c in crop_size),
        overlap=float(overlap),
        scales=tuple(float(s) for s in scales),
        flip=bool(flip),
    )
    self._labels = jax.jit(
        lambda state, images: jnp.argmax(infer(functools.partial(predict_fn, state), images), -1)
    )

  def normalize(self, image: np.ndarray) -> np.ndarray:
    """uint8 RGB -> the float32 input the model expects (its recorded mean, std, order)."""
    return normalize(image, **self.preprocessing)

  def __call__(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
    """(H, W) uint8 train ids for each uint8 (H, W, 3) RGB image; all of one size."""
    labels = []
    for start in range(0, len(images), self.batch_size):
      chunk = [self.normalize(image) for image in images[start : start + self.batch_size]]
      padding = [np.zeros_like(chunk[0])] * (self.batch_size - len(chunk))
      batch = np.stack(chunk + padding)
      labels.extend(np.asarray(self._labels(self._state, batch), np.uint8)[: len(chunk)])
    return labels


def _check_settings(mode, crop_size, overlap, scales, batch_size) -> None:
  if mode not in MODES:
    raise ValueError(f"--mode={mode!r} must be one of {MODES}.")
  if len(crop_size) != 2 or min(crop_size) < 1:
    raise ValueError(f"--crop_size={tuple(crop_size)} must be two positive sizes (height,width).")
  if not 0 <= overlap < 1:
    raise ValueError(f"--overlap={overlap} must be in [0, 1).")
  if not scales or min(scales) <= 0:
    raise ValueError(f"--scales={tuple(scales)} must be one or more positive scales.")
  if int(batch_size) < 1:
    raise ValueError(f"--batch_size={batch_size} must be at least 1.")


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
    predictor: Predictor,
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
