"""An exported ONNX model (``model.onnx`` + ``serving.json``) run by ONNX Runtime.

The folder is what ``python -m ccnet_jax.export MODEL_DIR OUT --format=onnx`` writes; the model
takes float32 RGB 0-255 images (B, H, W, 3) and returns the logits at the output stride.
ONNX Runtime runs it on the execution providers it was built with: the CPU always, CUDA and
TensorRT with the ``onnxruntime-gpu`` wheel.
"""

from __future__ import annotations

import json
import os
from typing import Any, Sequence

import numpy as np

from ccnet_jax.errors import UserError
from ccnet_jax.export.onnx import INPUT_NAME, ONNX_FILE, require_packages
from ccnet_jax.export.serving import SIGNATURE_FILE
from ccnet_jax.models.preprocessing import Preprocessing

# --provider names, in the order they are preferred when none is given.
PROVIDERS = {
    "tensorrt": "TensorrtExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "cpu": "CPUExecutionProvider",
}


def is_onnx_export(directory: str | os.PathLike) -> bool:
  """Whether ``directory`` holds an ONNX export (``model.onnx`` and ``serving.json``)."""
  return all(os.path.isfile(os.path.join(directory, f)) for f in (ONNX_FILE, SIGNATURE_FILE))


def available_providers() -> list[str]:
  """The --provider names this ONNX Runtime offers, preferred first."""
  import onnxruntime  # pylint: disable=g-import-not-at-top

  offered = set(onnxruntime.get_available_providers())
  return [name for name, provider in PROVIDERS.items() if provider in offered]


def _read_signature(directory: str) -> dict[str, Any]:
  path = os.path.join(directory, SIGNATURE_FILE)
  try:
    with open(path, encoding="utf-8") as f:
      signature = json.load(f)
    num_classes = int(signature["output"]["num_classes"])
    Preprocessing.from_json(signature["preprocessing"])
  except (OSError, ValueError, KeyError, TypeError) as error:
    raise UserError(
        f"{path} is not an export's serving.json ({error}); export the model again"
        " (python -m ccnet_jax.export MODEL_DIR OUT --format=onnx)."
    ) from None
  if signature.get("format") != "onnx" or num_classes < 1:
    raise UserError(
        f"{path} describes a {signature.get('format')!r} export with {num_classes} classes,"
        " not an ONNX model; export it with --format=onnx."
    )
  return signature


class OnnxModel:
  """An ONNX Runtime session on an exported model: RGB 0-255 images -> logits, in numpy.

  A network for ``prediction.runtime.RuntimePredictor`` (``predict.py --model=EXPORT``).
  """

  def __init__(
      self,
      directory: str | os.PathLike,
      *,
      provider: str | None = None,
      threads: int | None = None,
  ):
    """Loads ``directory``; ``provider``: 'cpu', 'cuda' or 'tensorrt' (default: the first
    of them this ONNX Runtime offers); ``threads``: ONNX Runtime's intra-op threads (default:
    one per physical core)."""
    require_packages(("onnxruntime",))
    import onnxruntime  # pylint: disable=g-import-not-at-top

    self.directory = os.fspath(directory)
    self.signature = _read_signature(self.directory)
    self.num_classes = int(self.signature["output"]["num_classes"])
    self.preprocessing = Preprocessing.from_json(self.signature["preprocessing"])
    offered = available_providers()
    if provider is None:
      provider = offered[0]
    if provider not in PROVIDERS:
      raise UserError(f"--provider={provider} is not one of {', '.join(PROVIDERS)}.")
    if provider not in offered:
      raise UserError(
          f"--provider={provider}: this onnxruntime offers {', '.join(offered)}; CUDA and"
          " TensorRT come with the onnxruntime-gpu wheel (and the CUDA/TensorRT libraries)."
      )
    self.provider = provider
    # Later providers (the CPU last) take the nodes the chosen one cannot run.
    chain = [PROVIDERS[name] for name in offered[offered.index(provider) :]]
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3  # Errors only: ORT's warnings are about its own fusions.
    if threads:
      options.intra_op_num_threads = int(threads)
    try:
      self.session = onnxruntime.InferenceSession(
          os.path.join(self.directory, ONNX_FILE), options, providers=chain
      )
    except Exception as error:  # ORT raises its own exception types.
      message = (str(error).strip() or type(error).__name__).splitlines()[-1]
      raise UserError(
          f"{os.path.join(self.directory, ONNX_FILE)} cannot be loaded by ONNX Runtime: {message}"
      ) from None
    self.description = f"ONNX export {self.directory} on ONNX Runtime ({provider})"
    self._output_shapes: dict[tuple[int, ...], tuple[int, ...]] = {}

  def __call__(self, images: np.ndarray) -> np.ndarray:
    """(B, H, W, 3) float32 RGB 0-255 -> (B, h, w, num_classes) float32 logits."""
    images = np.ascontiguousarray(images, np.float32)
    return self.session.run(None, {INPUT_NAME: images})[0]

  def output_shape(self, input_shape: Sequence[int]) -> tuple[int, ...]:
    """The logits' shape for images of ``input_shape`` (from one run on zeros, then cached)."""
    input_shape = tuple(int(d) for d in input_shape)
    if input_shape not in self._output_shapes:
      self._output_shapes[input_shape] = self(np.zeros(input_shape, np.float32)).shape
    return self._output_shapes[input_shape]
