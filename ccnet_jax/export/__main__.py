"""Exports a model directory for serving.

  python -m ccnet_jax.export models/ccnet_official exported/sm --format=saved_model
  python -m ccnet_jax.export runs/cs/model exported/lite --format=tflite --height=512 --width=512
  python -m ccnet_jax.export runs/cs/model exported/hlo --format=stablehlo --batch=0
  python -m ccnet_jax.export runs/cs/model exported/onnx --format=onnx --batch=0

The arguments are the model directory (a run's model/, or a converted one) and the directory to
write the export into (written whole or not at all; an existing OUT_DIR that holds files is
refused unless --overwrite, which replaces it whole). Sizes left out (or 0) are symbolic: the
export accepts any size there at run time. TFLite needs all three fixed.
"""

from __future__ import annotations

import json

from absl import flags

from ccnet_jax import cli
from ccnet_jax.errors import UserError
from ccnet_jax.export.serving import FORMATS, export_model

_FORMAT = flags.DEFINE_enum("format", None, FORMATS, "What to write.")
_BATCH = flags.DEFINE_integer("batch", 1, "Fixed batch size; 0 = any.")
_HEIGHT = flags.DEFINE_integer("height", 0, "Fixed image height; 0 = any.")
_WIDTH = flags.DEFINE_integer("width", 0, "Fixed image width; 0 = any.")
_OVERWRITE = flags.DEFINE_bool(
    "overwrite", False, "Replace OUT_DIR whole if it holds files (default: refuse)."
)
_DTYPE = flags.DEFINE_string(
    "dtype", None, "Computation dtype (default: the model's; float32 for CPU runtimes)."
)
_OPSET = flags.DEFINE_integer("opset", None, "ONNX opset (--format=onnx; default: 21).")


def main(arguments: list[str]) -> None:
  if len(arguments) != 2:
    raise UserError(f"expected MODEL_DIR OUT_DIR, got {' '.join(arguments) or 'nothing'} (--help).")
  summary = export_model(
      *arguments,
      format=cli.required(_FORMAT),
      batch=_BATCH.value or None,
      height=_HEIGHT.value or None,
      width=_WIDTH.value or None,
      dtype=_DTYPE.value,
      opset=_OPSET.value,
      overwrite=_OVERWRITE.value,
  )
  print(json.dumps(summary, indent=2))


if __name__ == "__main__":
  cli.run(main, kept="OUT_DIR is left as it was (an export replaces it whole or not at all).")
