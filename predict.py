"""Label images and videos with a trained or converted CCNet.

  python predict.py --model=/tmp/demo photos/ street.jpg 'clips/*.mp4' --out=predictions
  python predict.py --model=runs/cs/best frames/ --out=out --mode=sliding --label_ids
  python predict.py --model=models/ccnet_official img.png --out=out --scales=0.75,1,1.25 --flip

``--model`` is a model directory (written by training or ``python -m ccnet_jax.convert``),
a training workdir (its exported ``model/``, else ``best/``, else its newest checkpoint), or
an ONNX export (``python -m ccnet_jax.export ... --format=onnx``: ``model.onnx`` and
``serving.json``), which ONNX Runtime runs (``--provider``).
Inputs are image files, folders (searched recursively), glob patterns and video files. For
each image it writes ``NAME_pred.png`` (classes in the dataset's colours) and
``NAME_overlay.png``, with ``--label_ids`` also ``NAME_labelIds.png`` (Cityscapes label ids,
as the benchmark server expects); for each video ``NAME_pred.mp4`` and ``NAME_overlay.mp4`` (and with ``--label_ids``
one label-id PNG a frame in ``NAME_labelIds/``).
"""

from ccnet_jax import interrupts

if __name__ == "__main__":  # First: a signal while the libraries below load ends in one line.
  interrupts.install()

import warnings

from absl import flags, logging

from ccnet_jax import atomic, cli
from ccnet_jax.data.labels import DATASET_NAMES
from ccnet_jax.errors import UserError
from ccnet_jax.evaluation.inference import MODES, InferenceSettings
from ccnet_jax.export.onnx_runtime import PROVIDERS, OnnxModel, is_onnx_export
from ccnet_jax.loading import load_model
from ccnet_jax.prediction.files import ON_ERROR, predict_paths
from ccnet_jax.prediction.predictor import Predictor
from ccnet_jax.prediction.runtime import RuntimePredictor

_MODEL = flags.DEFINE_string(
    "model",
    None,
    "Model directory, training workdir or its checkpoints/ (see ccnet_jax.loading), or an ONNX"
    " export.",
)
_OUT = flags.DEFINE_string("out", None, "Folder for the outputs (created if needed).")
_DATASET = flags.DEFINE_enum(
    "dataset", None, DATASET_NAMES, "Palette and label ids (default: from the class count)."
)
_MODE = flags.DEFINE_enum(
    "mode",
    "whole",
    MODES,
    "Whole-image or sliding-window inference. By default an image size whose whole-image"
    " program does not fit in the device's free memory is predicted in sliding windows.",
)
_CROP = flags.DEFINE_list("crop_size", ["769", "769"], "Sliding window height,width.")
_OVERLAP = flags.DEFINE_float("overlap", 1 / 3, "Fraction of a window shared with the next.")
_SCALES = flags.DEFINE_list("scales", ["1.0"], "Image scales whose predictions are averaged.")
_FLIP = flags.DEFINE_bool("flip", False, "Also average the horizontally flipped prediction.")
_BATCH = flags.DEFINE_integer("batch_size", 1, "Images (of one size) or frames per forward pass.")
_DTYPE = flags.DEFINE_enum(
    "dtype", None, ["float32", "bfloat16"], "Computation dtype (default: the model's)."
)
_PROVIDER = flags.DEFINE_enum(
    "provider",
    None,
    list(PROVIDERS),
    "ONNX Runtime's execution provider for an ONNX export (default: the first of"
    f" {', '.join(PROVIDERS)} that is installed).",
)
_LABEL_IDS = flags.DEFINE_bool("label_ids", False, "Also write raw label-id PNGs.")
_ON_ERROR = flags.DEFINE_enum(
    "on_error", "stop", ON_ERROR, "On a bad input: stop with its error, or skip it and go on."
)
_PROGRESS = flags.DEFINE_bool("progress", True, "Show progress bars.")


def _numbers(values, kind, flag):
  try:
    return tuple(kind(value) for value in values)
  except ValueError:
    raise ValueError(f"--{flag}={','.join(values)} must be a comma-separated list of numbers.")


def main(inputs):
  if not inputs:
    raise UserError("give at least one input: image files, folders, globs or videos.")
  model, out = cli.required(_MODEL), cli.required(_OUT)
  atomic.check_folder(out, "--out")  # Before the model loads: a bad --out fails at once.
  # Progress and results are printed: logs are quiet (warnings at most, none unless
  # CCNET_JAX_TRACEBACK is set, see cli).
  logging.set_verbosity(min(logging.get_verbosity(), logging.WARNING))
  # Videos run ffmpeg as a subprocess (fork, then exec at once): JAX's warning that a forked
  # child cannot use JAX's threads does not concern it.
  warnings.filterwarnings("ignore", message=r"os\.fork\(\) was called", category=RuntimeWarning)
  try:
    settings = InferenceSettings(
        mode=_MODE.value,
        crop_size=_numbers(_CROP.value, int, "crop_size"),
        overlap=_OVERLAP.value,
        scales=_numbers(_SCALES.value, float, "scales"),
        flip=_FLIP.value,
    )
  except ValueError as error:
    raise ValueError(f"--{error}") from None
  predictor, source = _predictor(model, settings)
  print(f"Model: {source} ({predictor.dataset.name} classes).", flush=True)
  counts = predict_paths(
      predictor,
      inputs,
      out,
      label_ids=_LABEL_IDS.value,
      on_error=_ON_ERROR.value,
      progress=_PROGRESS.value,
  )
  print(
      f"Wrote {counts['images']} images and {counts['videos']} videos ({counts['frames']}"
      f" frames) to {out}; {counts['skipped']} inputs skipped.",
      flush=True,
  )


def _predictor(model: str, settings: InferenceSettings):
  """The predictor of ``--model`` and what it runs: JAX for a model, ONNX Runtime for an export."""
  options = {"settings": settings, "dataset": _DATASET.value, "batch_size": _BATCH.value}
  if is_onnx_export(model):
    if _DTYPE.value is not None:
      raise UserError(f"--dtype is for JAX models; {model} is an ONNX export, run as exported.")
    network = OnnxModel(model, provider=_PROVIDER.value)
    return RuntimePredictor(network, **options), network.description
  if _PROVIDER.value is not None:
    raise UserError(f"--provider is for ONNX exports; {model} is run by JAX.")
  loaded = load_model(model, dtype=_DTYPE.value)
  # --mode=whole named on the command line is kept; the default may switch to sliding.
  fallback = not flags.FLAGS["mode"].present
  return Predictor(loaded, fallback_to_sliding=fallback, **options), loaded.source


if __name__ == "__main__":
  cli.run(main, kept="the outputs written so far are complete; none is half-written.")
