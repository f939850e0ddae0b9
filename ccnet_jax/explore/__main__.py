"""Explore a model in the browser: its labels, and where a clicked pixel looks.

  python -m ccnet_jax.explore --model=/tmp/demo [--port=8000] [--images=FOLDER] [--host=HOST]

Serves a page on http://127.0.0.1:8000/ (this machine only; --host=0.0.0.0 opens it to the
network) where one picks an image (a file, a drop, a generated demo scene or one of --images),
sees the model's prediction over it, and clicks a pixel to see its criss-cross attention after
loop 1 and through all loops, with its class probabilities. Beside the page, POST /predict and
POST /attention answer programs (see ccnet_jax/explore/server.py). Needs the optional web
libraries: python -m pip install -r requirements-explore.txt
"""

from __future__ import annotations

from absl import flags

from ccnet_jax import cli
from ccnet_jax.explore.backend import DATASET_NAMES, MODES
from ccnet_jax.explore.launch import explore, inference_settings
from ccnet_jax.explore.session import Limits

_MODEL = flags.DEFINE_string("model", None, "Model directory or training workdir.")
_PORT = flags.DEFINE_integer("port", 8000, "Port to listen on (0: any free one).")
_HOST = flags.DEFINE_string("host", "127.0.0.1", "Address to listen on.")
_IMAGES = flags.DEFINE_string("images", None, "Folder of images offered in the page.")
_DATASET = flags.DEFINE_enum(
    "dataset", None, DATASET_NAMES, "Class names and colours (default: from the class count)."
)
_MODE = flags.DEFINE_enum("mode", "whole", MODES, "Default inference: whole or sliding.")
_CROP = flags.DEFINE_list("crop_size", ["769", "769"], "Sliding window height,width.")
_OVERLAP = flags.DEFINE_float("overlap", 1 / 3, "Fraction of a window shared with the next.")
_MAX_UPLOAD = flags.DEFINE_float(
    "max_upload_mb", Limits.max_bytes / 2**20, "Largest upload accepted (MiB)."
)
_MAX_PIXELS = flags.DEFINE_float(
    "max_megapixels", Limits.max_pixels / 1e6, "Largest image accepted (megapixels)."
)


def _crop_size(values: list[str]) -> tuple[int, ...]:
  try:
    return tuple(int(value) for value in values)
  except ValueError:
    raise ValueError(f"--crop_size={','.join(values)} must be two integers HEIGHT,WIDTH.") from None


def main(arguments: list[str]) -> None:
  cli.no_arguments(arguments)
  explore(
      cli.required(_MODEL),
      port=_PORT.value,
      host=_HOST.value,
      images=_IMAGES.value,
      dataset=_DATASET.value,
      settings=inference_settings(_MODE.value, _crop_size(_CROP.value), _OVERLAP.value),
      limits=Limits(
          max_bytes=int(_MAX_UPLOAD.value * 2**20), max_pixels=int(_MAX_PIXELS.value * 1e6)
      ),
  )


if __name__ == "__main__":
  cli.run(main, kept="the explorer writes no files.")
