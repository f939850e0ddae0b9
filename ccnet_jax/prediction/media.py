"""The user's inputs: image files, folders, globs and videos, read and written one at a time.

Videos go through imageio's ffmpeg plugin (imageio-ffmpeg ships the ffmpeg binary), so
any container and codec ffmpeg reads is accepted; outputs are H.264 MP4 files.
"""

from __future__ import annotations

import dataclasses
import glob
import os
from typing import Iterator, Sequence

import numpy as np

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


def _folder_inputs(folder: str) -> list[Input]:
  """Every image and video under ``folder`` (recursively, sorted), named relative to it."""
  found = []
  for root, dirs, files in os.walk(folder):
    dirs.sort()
    for filename in sorted(files):
      path = os.path.join(root, filename)
      if _is_media(path):
        relative = os.path.splitext(os.path.relpath(path, folder))[0]
        found.append(Input(path, relative.replace(os.sep, "_")))
  if not found:
    raise ValueError(f"{folder}: the folder holds no image or video files.")
  return found


def _file_input(path: str) -> Input:
  if not _is_media(path):
    raise _kind_error(path)
  return Input(path, os.path.splitext(os.path.basename(path))[0])


def expand_argument(argument: str) -> list[Input]:
  """The inputs one command-line argument names: a file, a folder or a glob pattern."""
  if os.path.isdir(argument):
    return _folder_inputs(argument)
  if os.path.isfile(argument):
    return [_file_input(argument)]
  if any(c in argument for c in _GLOB_CHARACTERS):
    matches = sorted(p for p in glob.glob(argument, recursive=True) if os.path.isfile(p))
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


def _ffmpeg_reader(path: str):
  import imageio.v2 as imageio  # Imported on first use: image-only runs never load ffmpeg.

  try:
    return imageio.get_reader(path, format="FFMPEG")
  except (OSError, RuntimeError, ValueError, IndexError) as error:
    raise ValueError(f"cannot read video {path}: {error}") from None


def video_info(path: str) -> tuple[int, float]:
  """(number of frames, frames per second) of a video file."""
  reader = _ffmpeg_reader(path)
  try:
    return int(reader.count_frames()), float(reader.get_meta_data().get("fps", 25.0))
  except (OSError, RuntimeError, ValueError, IndexError) as error:
    raise ValueError(f"cannot read video {path}: {error}") from None
  finally:
    reader.close()


def video_frames(path: str) -> Iterator[np.ndarray]:
  """The frames of a video, uint8 (H, W, 3) RGB, in order."""
  reader = _ffmpeg_reader(path)
  try:
    for frame in reader:
      yield np.asarray(frame)[..., :3]
  except (OSError, RuntimeError, ValueError, IndexError) as error:
    raise ValueError(f"cannot read video {path}: {error}") from None
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
