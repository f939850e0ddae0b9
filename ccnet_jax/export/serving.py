"""The serving function of a model directory, and its export as SavedModel, TFLite, StableHLO or
ONNX.

The exported function takes images as the user has them, float32 (B, H, W, 3) RGB on the
0-255 scale, applies the preprocessing recorded in the model directory (channel order, mean,
std) and returns the main logits, float32 (B, h, w, num_classes) at the network's output
stride (1/8 of the input for the D8 models: h = ceil(H / 8) for the deep stem). Upsampling
them to the image (bilinear) and the argmax are the caller's, as in training and evaluation.

The criss-cross attention is always the einsum implementation (its matmul form for ONNX,
see ``export/onnx.py``): the Pallas kernels are device-specific custom calls that a serving
runtime cannot run.
"""

from __future__ import annotations

import functools
import json
import os
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from ccnet_jax.export import onnx as onnx_export
from ccnet_jax.loading import load_model
from ccnet_jax.models.preprocessing import Preprocessing
from ccnet_jax.models.registry import DTYPES

FORMATS = ("saved_model", "tflite", "stablehlo", "onnx")
STABLEHLO_FILE = "model.jax_exported"
STABLEHLO_TEXT_FILE = "model.mlir"
TFLITE_FILE = "model.tflite"
SIGNATURE_FILE = "serving.json"

ServingFn = Callable[[jax.Array], jax.Array]


def serving_fn(model: nnx.Module, preprocessing: Preprocessing) -> ServingFn:
  """images (B, H, W, 3) RGB 0-255 -> main logits (B, h, w, classes); weights are constants."""
  graphdef, state = nnx.split(model)

  def serve(images):
    logits, _ = nnx.merge(graphdef, state)(preprocessing.normalize(images))
    return logits.astype(jnp.float32)

  return serve


def input_shape(batch: int | None, height: int | None, width: int | None) -> tuple:
  """The exported input shape; None entries become symbolic (any size at run time)."""
  names = iter(("b", "h", "w"))
  spec = ", ".join(
      next(names) if size is None else str(int(size)) for size in (batch, height, width)
  )
  return tuple(jax.export.symbolic_shape(spec + ", 3"))


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
) -> dict[str, Any]:
  """Exports ``model_directory`` to ``out_dir`` in ``format``; returns what was written.

  ``batch``, ``height``, ``width``: a fixed size, or None for any size at run time.
  ``opset``: the ONNX opset (``format='onnx'`` only; default ``onnx.DEFAULT_OPSET``).
  ``out_dir`` also receives ``serving.json``: the input and output contract.
  """
  if format not in FORMATS:
    raise ValueError(f"--format={format!r} is not one of {FORMATS}.")
  sizes = {"batch": batch, "height": height, "width": width}
  for name, size in sizes.items():
    if size is not None and int(size) < 1:
      raise ValueError(f"--{name}={size} must be a positive size (or left out for any size).")
  if format == "tflite" and None in sizes.values():
    raise ValueError(
        "--format=tflite needs a fixed input size: give --batch, --height and --width."
    )
  if dtype is not None and dtype not in DTYPES:
    raise ValueError(f"--dtype={dtype!r} is not one of {sorted(DTYPES)}.")
  exporter = _EXPORTERS[format]
  # The einsum attention: the Pallas kernels are custom calls a serving runtime cannot run.
  cca_impl = "einsum"
  if format == "onnx":
    onnx_export.require_packages()
    exporter = functools.partial(exporter, opset=opset or onnx_export.DEFAULT_OPSET)
    cca_impl = "matmul"  # Its form with MatMul operators (no Einsum, no EyeLike).
  elif opset is not None:
    raise ValueError(f"--opset is an ONNX setting; --format={format} has none.")
  loaded = load_model(model_directory, dtype=dtype, cca_impl=cca_impl)
  if format == "onnx":
    onnx_export.check_symbolic_sizes(loaded.config, height=height, width=width)
  shape = input_shape(batch, height, width)
  out_dir = os.path.abspath(os.fspath(out_dir))
  os.makedirs(out_dir, exist_ok=True)
  written = exporter(serving_fn(loaded.model, loaded.preprocessing), shape, out_dir)
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
          "layout": "NHWC at the output stride; upsample bilinearly, then argmax",
          "num_classes": loaded.num_classes,
      },
      "preprocessing": loaded.preprocessing.to_json(),
      "model": loaded.config.name,
  }
  if format == "onnx":
    signature["opset"] = exporter.keywords["opset"]
  path = os.path.join(out_dir, SIGNATURE_FILE)
  with open(path, "w", encoding="utf-8") as f:
    json.dump(signature, f, indent=2)
  return {"wrote": written + [path], **signature}
