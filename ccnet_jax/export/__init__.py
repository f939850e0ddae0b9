"""Serving exports of a model directory: TensorFlow SavedModel, TFLite, StableHLO and ONNX."""

from ccnet_jax.export.serving import (
    FORMATS,
    SIGNATURE_FILE,
    STABLEHLO_FILE,
    STABLEHLO_TEXT_FILE,
    TFLITE_FILE,
    export_model,
)

__all__ = [
    "FORMATS",
    "SIGNATURE_FILE",
    "STABLEHLO_FILE",
    "STABLEHLO_TEXT_FILE",
    "TFLITE_FILE",
    "export_model",
]
