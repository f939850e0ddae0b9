"""The serving function of a model directory, and its export as SavedModel, TFLite, StableHLO or
ONNX.

The exported function takes images as the user has them, float32 (B, H, W, 3) RGB on the
0-255 scale, applies the preprocessing recorded in the model directory (channel order, mean,
std) and returns the main logits, float32 (B, h, w, num_classes) at the network's output
stride: for the D8 models h = floor((H + 1) / 8) + 1 with the official deep stem (its
max-pool rounds up), h = ceil(H / 8) with mmseg's v1c and torchvision's stems, and the same
for w; ``serving.json`` records the exported model's own expression. Upsampling them to the
image (bilinear with align_corners=True, as ``predict.py`` and the official evaluation do) and
the argmax are the caller's.

The criss-cross attention is always the einsum implementation (its matmul form for ONNX,
see ``export/onnx.py``): the Pallas kernels are device-specific custom calls that a serving
runtime cannot run.

An export is written into a temporary folder beside OUT, which replaces OUT only when the
export is complete (``ccnet_jax.atomic``); an existing non-empty OUT is refused unless
``overwrite``, and then replaced whole. What a format cannot hold is refused before any work.
"""

from __future__ import annotations

import functools
import json
import os
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from ccnet_jax import atomic
from ccnet_jax.export import onnx as onnx_export
from ccnet_jax.loading import load_model
from ccnet_jax.models.preprocessing import Preprocessing
from ccnet_jax.models.registry import DTYPES

FORMATS = ("saved_model", "tflite", "stablehlo", "onnx")
STABLEHLO_FILE = "model.jax_exported"
STABLEHLO_TEXT_FILE = "model.mlir"
TFLITE_FILE = "model.tflite"
SIGNATURE_FILE = "serving.json"

# The computation dtypes each format holds, and why where it holds fewer than JAX computes in.
# SavedModel and StableHLO carry the XLA program as it is; TFLite's converter legalises float32
# convolutions only (bfloat16 and float16 fail in it); a bfloat16 ONNX graph fails ONNX's type
# check at its Conv nodes.
FORMAT_DTYPES = {
    "saved_model": tuple(DTYPES),
    "stablehlo": tuple(DTYPES),
    "tflite": ("float32",),
    "onnx": ("float32", "float16"),
}
FORMAT_LIMITS = {
    "tflite": "TFLite converts float32 models; quantise the float32 .tflite with TFLite's tools"
    " for a smaller one",
    "onnx": "ONNX's Conv takes no bfloat16 at the opsets ONNX Runtime runs; export float16",
}

ServingFn = Callable[[jax.Array], jax.Array]


def serving_fn(model: nnx.Module, preprocessing: Preprocessing) -> ServingFn:
  """images (B, H, W, 3) RGB 0-255 -> main logits (B, h, w, classes); weights are constants."""
  graphdef, state = nnx.split(model)

  def serve(images):
    logits, _ = nnx.merge(graphdef, state)(preprocessing.normalize(images))
    return logits.astype(jnp.float32)

  return serve


def input_shape(batch: int | None, height: int | None, width: int | None) -> tuple:
  """The exported input shape; None entries become symbolic (any size at run time), named
  b, h and w."""
  spec = ", ".join(
      name if size is None else str(int(size))
      for name, size in zip(("b", "h", "w"), (batch, height, width))
  )
  return tuple(jax.export.symbolic_shape(spec + ", 3"))


def output_shape(serve: ServingFn, shape: Sequence) -> list[str]:
  """The logits' shape for inputs of ``shape`` as JAX derives it: numbers, or expressions of
  b, h and w (``floordiv(h - 1, 2)`` is (h - 1) // 2)."""
  out = jax.eval_shape(serve, jax.ShapeDtypeStruct(tuple(shape), jnp.float32))
  return [str(d) for d in out.shape]


def export_stablehlo(serve: ServingFn, shape: Sequence, out_dir: str) -> list[str]:
  """``jax.export``: the serialised Exported (``jax.export.deserialize``) and its MLIR text."""
  exported = jax.export.export(jax.jit(serve))(jax.ShapeDtypeStruct(shape, jnp.float32))
  paths = [os.path.join(out_dir, STABLEHLO_FILE), os.path.join(out_dir, STABLEHLO_TEXT_FILE)]
  with open(paths[0], "wb") as f:
    f.write(exported.serialize())
  with open(paths[1], "w", encoding="utf-8") as f:
    f.write(exported.mlir_module())
  return paths


def _tf_module(serve: ServingFn, shape: Sequence):
  """A tf.Module whose ``serve`` is the jax2tf conversion of ``serve`` for ``shape``."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from jax.experimental import jax2tf  # pylint: disable=g-import-not-at-top

  polymorphic = "(" + ", ".join(str(d) for d in shape) + ")"
  converted = jax2tf.convert(serve, polymorphic_shapes=[polymorphic], with_gradient=False)
  static = [d if isinstance(d, int) else None for d in shape]
  module = tf.Module()
  module.serve = tf.function(
      lambda images: {"logits": converted(images)},
      autograph=False,
      input_signature=[tf.TensorSpec(static, tf.float32, name="images")],
  )
  return module


def export_saved_model(serve: ServingFn, shape: Sequence, out_dir: str) -> list[str]:
  """A TensorFlow SavedModel with signature 'serving_default': images -> {'logits'}."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  module = _tf_module(serve, shape)
  tf.saved_model.save(module, out_dir, signatures={"serving_default": module.serve})
  return [os.path.join(out_dir, "saved_model.pb")]


def export_tflite(serve: ServingFn, shape: Sequence, out_dir: str) -> list[str]:
  """A TFLite flatbuffer; TFLite needs a fixed input size (batch, height and width)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  module = _tf_module(serve, shape)
  converter = tf.lite.TFLiteConverter.from_concrete_functions(
      [module.serve.get_concrete_function()], module
  )
  path = os.path.join(out_dir, TFLITE_FILE)
  with open(path, "wb") as f:
    f.write(converter.convert())
  return [path]


_EXPORTERS = {
    "saved_model": export_saved_model,
    "tflite": export_tflite,
    "stablehlo": export_stablehlo,
    "onnx": onnx_export.export_onnx,
}


def check_export(  # pylint: disable=redefined-builtin
    format: str, *, sizes: dict[str, int | None], dtype: str | None, opset: int | None = None
) -> None:
  """Refuses, in one line and before any work, what ``format`` cannot hold."""
  if format not in FORMATS:
    raise ValueError(f"--format={format!r} is not one of {FORMATS}.")
  for name, size in sizes.items():
    if size is not None and int(size) < 1:
      raise ValueError(f"--{name}={size} must be a positive size (or left out for any size).")
  if format == "tflite" and None in sizes.values():
    raise ValueError(
        "--format=tflite needs a fixed input size: give --batch, --height and --width."
    )
  if dtype is not None and dtype not in DTYPES:
    raise ValueError(f"--dtype={dtype!r} is not one of {sorted(DTYPES)}.")
  if dtype is not None and dtype not in FORMAT_DTYPES[format]:
    raise ValueError(
        f"--format={format} cannot hold a {dtype} model: its computation dtypes are"
        f" {', '.join(FORMAT_DTYPES[format])} ({FORMAT_LIMITS[format]})."
    )
  if opset is not None and format != "onnx":
    raise ValueError(f"--opset is an ONNX setting; --format={format} has none.")


def export_model(  # pylint: disable=redefined-builtin
    model_directory: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    format: str,
    batch: int | None = 1,
    height: int | None = None,
    width: int | None = None,
    dtype: str | None = None,
    opset: int | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
  """Exports ``model_directory`` to ``out_dir`` in ``format``; returns what was written.

  ``batch``, ``height``, ``width``: a fixed size, or None for any size at run time.
  ``opset``: the ONNX opset (``format='onnx'`` only; default ``onnx.DEFAULT_OPSET``).
  ``out_dir`` also receives ``serving.json``: the input and output contract. It is written
  whole or not at all; an existing non-empty ``out_dir`` is replaced only with ``overwrite``.
  """
  sizes = {"batch": batch, "height": height, "width": width}
  check_export(format, sizes=sizes, dtype=dtype, opset=opset)
  out_dir = os.path.abspath(os.fspath(out_dir))
  atomic.check_replaceable(out_dir, overwrite=overwrite)
  exporter = _EXPORTERS[format]
  # The einsum attention: the Pallas kernels are custom calls a serving runtime cannot run.
  cca_impl = "einsum"
  if format == "onnx":
    onnx_export.require_packages()
    exporter = functools.partial(exporter, opset=opset or onnx_export.DEFAULT_OPSET)
    cca_impl = "matmul"  # Its form with MatMul operators (no Einsum, no EyeLike).
  loaded = load_model(model_directory, dtype=dtype, cca_impl=cca_impl)
  if format == "onnx":
    onnx_export.check_symbolic_sizes(loaded.config, height=height, width=width)
  shape = input_shape(batch, height, width)
  serve = serving_fn(loaded.model, loaded.preprocessing)
  signature = {
      "format": format,
      "input": {
          "name": "images",
          "dtype": "float32",
          "shape": [str(d) for d in shape],
          "layout": "NHWC, RGB, 0-255 (preprocessing applied inside)",
      },
      "output": {
          "name": "logits",
          "dtype": "float32",
          "shape": output_shape(serve, shape),
          "layout": (
              "NHWC at the output stride; upsample to (H, W) bilinearly with"
              " align_corners=True, then argmax"
          ),
          "num_classes": loaded.num_classes,
      },
      "preprocessing": loaded.preprocessing.to_json(),
      "model": loaded.config.name,
  }
  if format == "onnx":
    signature["opset"] = exporter.keywords["opset"]
  with atomic.replacing_directory(out_dir, overwrite=overwrite) as staging:
    written = exporter(serve, shape, staging)
    with open(os.path.join(staging, SIGNATURE_FILE), "w", encoding="utf-8") as f:
      json.dump(signature, f, indent=2)
  written = [os.path.join(out_dir, os.path.relpath(path, staging)) for path in written]
  return {"wrote": written + [os.path.join(out_dir, SIGNATURE_FILE)], **signature}
