"""The user's inputs: image files, folders, globs and videos, read and written one at a time.

Videos go through imageio's ffmpeg plugin (imageio-ffmpeg ships the ffmpeg binary), so
any container and codec ffmpeg reads is accepted; outputs are H.264 MP4 files.
"""

from __future__ import annotations

import dataclasses
import glob
import math
import os
import re
from typing import Callable, Iterator, Sequence

import numpy as np

from ccnet_jax import atomic

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm")
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg")
_GLOB_CHARACTERS = "*?["


@dataclasses.dataclass(frozen=True)
class Input:
  """One image or video to predict, and the stem of its outputs' names.

  The stem is the file name without extension; in a folder, its path relative to the
  folder with separators as underscores ('city/img.png' -> 'city_img'), so every output
  lands directly in the output folder.
  """

  path: str
  name: str

  @property
  def is_video(self) -> bool:
    return os.path.splitext(self.path)[1].lower() in VIDEO_EXTENSIONS


def _kind_error(path: str) -> ValueError:
  return ValueError(
      f"{path}: unknown extension {os.path.splitext(path)[1] or '(none)'!r}; images are"
      f" {' '.join(IMAGE_EXTENSIONS)}, videos {' '.join(VIDEO_EXTENSIONS)}."
  )


def _is_media(path: str) -> bool:
  return os.path.splitext(path)[1].lower() in IMAGE_EXTENSIONS + VIDEO_EXTENSIONS


def _folder_inputs(folder: str, skip: Callable[[str], bool]) -> list[Input]:
  """Every image and video under ``folder`` (recursively, sorted) that ``skip`` does not
  exclude, named relative to it."""
  found = []
  for root, dirs, files in os.walk(folder):
    dirs[:] = sorted(d for d in dirs if not atomic.is_partial(d))
    for filename in sorted(files):
      path = os.path.join(root, filename)
      if _is_media(path) and not atomic.is_partial(path) and not skip(path):
        relative = os.path.splitext(os.path.relpath(path, folder))[0]
        found.append(Input(path, relative.replace(os.sep, "_")))
  if not found:
    raise ValueError(f"{folder}: the folder holds no image or video files.")
  return found


def _file_input(path: str) -> Input:
  if not _is_media(path):
    raise _kind_error(path)
  return Input(path, os.path.splitext(os.path.basename(path))[0])


def expand_argument(argument: str, skip: Callable[[str], bool] = lambda path: False) -> list[Input]:
  """The inputs one command-line argument names: a file, a folder or a glob pattern.

  Files that a folder or a pattern finds are left out when ``skip(path)`` is true (a command's
  own outputs from an earlier run); a file named as it is never is.
  """
  if os.path.isdir(argument):
    return _folder_inputs(argument, skip)
  if os.path.isfile(argument):
    return [_file_input(argument)]
  if any(c in argument for c in _GLOB_CHARACTERS):
    matches = sorted(
        path
        for path in glob.glob(argument, recursive=True)
        if os.path.isfile(path) and not atomic.is_partial(path) and not skip(path)
    )
    if not matches:
      raise FileNotFoundError(f"{argument}: no file matches the pattern.")
    return [_file_input(path) for path in matches]
  raise FileNotFoundError(f"{argument}: no such file or folder.")


def check_unique_names(inputs: Sequence[Input]) -> None:
  """Two inputs whose outputs would overwrite each other are refused, naming both."""
  seen: dict[str, str] = {}
  for item in inputs:
    if item.name in seen and seen[item.name] != item.path:
      raise ValueError(
          f"{item.path} and {seen[item.name]} would both write outputs named {item.name!r};"
          " rename one or predict them in separate runs."
      )
    seen[item.name] = item.path


def _ffmpeg_reason(error: Exception) -> str:
  """ffmpeg's own messages in an imageio error, without the banner, as one line."""
  text = str(error)
  messages = [
      re.sub(r"^\[[^\]]*\]\s*", "", line.strip())
      for line in text.split("=== stderr ===")[-1].splitlines()
      if line.strip().startswith("[")
  ]
  if messages:
    return "; ".join(dict.fromkeys(messages))
  lines = [line.strip() for line in text.splitlines() if line.strip()]
  return lines[0] if lines else type(error).__name__


def _ffmpeg_reader(path: str):
  import imageio.v2 as imageio  # Imported on first use: image-only runs never load ffmpeg.

  try:
    return imageio.get_reader(path, format="FFMPEG")
  except (OSError, RuntimeError, ValueError, IndexError) as error:
    raise ValueError(f"cannot read video {path}: {_ffmpeg_reason(error)}.") from None


@dataclasses.dataclass(frozen=True)
class VideoInfo:
  fps: float
  declared_frames: int | None  # Duration x frame rate, as the container declares them.


def video_info(path: str) -> VideoInfo:
  """The frame rate of a video and the number of frames its container declares."""
  reader = _ffmpeg_reader(path)
  try:
    meta = reader.get_meta_data()
  except (OSError, RuntimeError, ValueError, IndexError) as error:
    raise ValueError(f"cannot read video {path}: {_ffmpeg_reason(error)}.") from None
  finally:
    reader.close()
  fps, duration = float(meta.get("fps") or 25.0), meta.get("duration")
  declared = int(round(float(duration) * fps)) if duration and math.isfinite(duration) else None
  return VideoInfo(fps, declared)


def cut_short(read: int, declared: int | None) -> bool:
  """Whether a video whose container declares ``declared`` frames lost some: fewer than that
  decoded, beyond two frames and 2% (a container's duration can include a longer audio track)."""
  return declared is not None and read < declared - max(2, 0.02 * declared)


def video_frames(path: str) -> Iterator[np.ndarray]:
  """The frames of a video, uint8 (H, W, 3) RGB, in order, as many as decode."""
  reader = _ffmpeg_reader(path)
  try:
    for frame in reader:
      yield np.asarray(frame)[..., :3]
  except (OSError, RuntimeError, ValueError, IndexError) as error:
    raise ValueError(f"cannot read video {path}: {_ffmpeg_reason(error)}.") from None
  finally:
    reader.close()


def video_writer(path: str, fps: float):
  """An H.264 MP4 writer (``append_data(frame)``, ``close()``) at ``fps``.

  H.264 in 4:2:0 needs even sizes: a frame with an odd height or width is scaled up
  by one pixel by ffmpeg; every other size is written as it is.
  """
  import imageio.v2 as imageio

  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  return imageio.get_writer(
      path,
      format="FFMPEG",
      fps=fps,
      codec="libx264",
      quality=8,
      macro_block_size=2,
      ffmpeg_log_level="error",
  )
