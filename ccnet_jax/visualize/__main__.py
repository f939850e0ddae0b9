"""Draws what a model attends to.

  python -m ccnet_jax.visualize attention --model /tmp/demo --image img.png \
      --pixel 200,30 --pixel 100,10 --out figures

For each --pixel Y,X (row, column of the image) one row of the figure shows the image,
the loop-1 criss-cross weights of that pixel, its effective weights through all R loops
(both upsampled onto the image, the pixel circled) and the model's prediction. The figure
is written to OUT/<image name>_attention.png.
"""

from __future__ import annotations

from absl import flags

from ccnet_jax import atomic, cli
from ccnet_jax.data.labels import DATASET_NAMES
from ccnet_jax.errors import UserError
from ccnet_jax.visualize.attention import parse_pixel, save_attention

COMMANDS = ("attention",)

_MODEL = flags.DEFINE_string("model", None, "Model directory or training workdir.")
_IMAGE = flags.DEFINE_string("image", None, "Image file.")
_PIXEL = flags.DEFINE_multi_string(
    "pixel", None, "Y,X: row,column of a pixel to show (repeat for several)."
)
_OUT = flags.DEFINE_string("out", None, "Folder for the figure.")
_DATASET = flags.DEFINE_enum(
    "dataset", None, DATASET_NAMES, "Palette (default: from the model's class count)."
)


def main(arguments: list[str]) -> None:
  if tuple(arguments) not in [(command,) for command in COMMANDS]:
    raise UserError(
        f"expected one of the commands {', '.join(COMMANDS)}, got"
        f" {' '.join(arguments) or 'nothing'} (--help)."
    )
  pixels = [parse_pixel(text) for text in cli.required(_PIXEL)]
  atomic.check_folder(cli.required(_OUT), "--out")  # Before the model loads.
  path = save_attention(
      cli.required(_MODEL),
      cli.required(_IMAGE),
      pixels,
      cli.required(_OUT),
      dataset=_DATASET.value,
  )
  print(f"Wrote {path}", flush=True)


if __name__ == "__main__":
  cli.run(main, kept="no figure was half-written (each is written whole or not at all).")
