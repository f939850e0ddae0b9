"""ONNX export through jax2onnx, for ONNX Runtime and TensorRT.

The serving function is the one every format exports (preprocessing inside, RGB 0-255 images
in, logits at the output stride out), traced by ``jax2onnx`` into standard ONNX operators.
Two parts of the network are written for it: the criss-cross attention is its ``matmul``
form (``MatMul``/``Transpose``, a diagonal mask from two ``Range``s, no ``Einsum`` or
``EyeLike``), and the stem's max-pool pads by a constant (``Pad`` + ``MaxPool``), so batch,
height and width all stay symbolic.

jax2onnx, onnx and onnxruntime are optional: ``requirements-onnx.txt`` pins them (installed
with ``--no-deps``, see that file); without them ``--format=onnx`` stops with one line.
"""

from __future__ import annotations

import collections
import importlib
import logging
import os
from typing import Callable, Sequence

import jax
import jax.numpy as jnp

from ccnet_jax.errors import UserError

ONNX_FILE = "model.onnx"
# Below jax2onnx's own default (23): the graph needs no newer operator, and older runtimes and
# TensorRT parsers read an older opset (the tests export at 18 and 21).
DEFAULT_OPSET = 21
INPUT_NAME = "images"
OUTPUT_NAME = "logits"
INSTALL_COMMAND = "python -m pip install --no-deps -r requirements-onnx.txt"
_PACKAGES = {"jax2onnx": "jax2onnx", "onnx": "onnx", "onnx_ir": "onnx-ir"}


def _importable(module: str) -> bool:
  try:
    importlib.import_module(module)
  except ImportError:
    return False
  return True


def require_packages(modules: Sequence[str] = tuple(_PACKAGES)) -> None:
  """Raises one line naming what is missing and the install command."""
  missing = [_PACKAGES.get(m, m) for m in modules if not _importable(m)]
  if missing:
    raise UserError(
        f"ONNX needs {', '.join(missing)}, which is not installed: run {INSTALL_COMMAND}"
        " (from the repository root)."
    )


def check_symbolic_sizes(model_config, *, height: int | None, width: int | None) -> None:
  """The sizes the converter cannot leave symbolic for this network, as one line.

  The non-local baseline reshapes its (H, W, H, W) weights to (H, W, H * W); jax2onnx computes
  that product wrongly for symbolic H and W (the graph then fails in ONNX Runtime), so its
  image size must be fixed. The criss-cross networks convert with every size symbolic.
  """
  if model_config.head.attention == "non_local" and (height is None or width is None):
    raise UserError(
        "--format=onnx of a non-local head needs --height and --width: the converter gets the"
        " H*W reshape of its attention wrong for symbolic sizes (the batch may stay symbolic)."
    )


def _to_onnx() -> Callable:
  """``jax2onnx.to_onnx``, imported without the warnings of the plugins this project skips.

  jax2onnx imports every plugin it ships and logs a traceback for each whose library (equinox,
  dm-pix, ...) is not installed; none of them converts anything of this network.
  """
  require_packages()
  plugin_logger = logging.getLogger("jax2onnx")
  level = plugin_logger.level
  plugin_logger.setLevel(logging.ERROR)
  try:
    from jax2onnx import to_onnx  # pylint: disable=g-import-not-at-top
    from jax2onnx.plugins import plugin_system  # pylint: disable=g-import-not-at-top

    plugin_system.import_all_plugins()
  finally:
    plugin_logger.setLevel(level)
  return to_onnx


def _symbolic_output_dims(serve: Callable, shape: Sequence) -> list[str | int]:
  """The output's dimensions as JAX derives them ('b', 'floordiv(h - 1, 8) + 2', 5, ...)."""
  out = jax.eval_shape(serve, jax.ShapeDtypeStruct(tuple(shape), jnp.float32))
  return [d if isinstance(d, int) else str(d) for d in out.shape]


def _set_dims(value_info, dims: Sequence[str | int]) -> None:
  tensor_shape = value_info.type.tensor_type.shape
  del tensor_shape.dim[:]
  for size in dims:
    dim = tensor_shape.dim.add()
    if isinstance(size, int):
      dim.dim_value = size
    else:
      dim.dim_param = size


def _tidy(model, output_dims: Sequence[str | int]) -> None:
  """Drops what the converter stamps wrongly or leaves behind; names the output's dims.

  jax2onnx records intermediate shapes (``value_info``) whose symbolic labels after a
  max-pool are not the pooled sizes; runtimes infer shapes themselves, so they are removed
  rather than trusted. Constants no node reads are removed too (ONNX Runtime warns of each).
  """
  graph = model.graph
  del graph.value_info[:]
  used = {name for node in graph.node for name in node.input}
  unused = [init for init in graph.initializer if init.name not in used]
  for init in unused:
    graph.initializer.remove(init)
  _set_dims(graph.output[0], output_dims)


def op_census(model) -> dict[str, int]:
  """How many nodes of each operator type the graph holds, most frequent first."""
  counts = collections.Counter(node.op_type for node in model.graph.node)
  return dict(sorted(counts.items(), key=lambda item: (-item[1], item[0])))


def export_onnx(
    serve: Callable, shape: Sequence, out_dir: str, *, opset: int = DEFAULT_OPSET
) -> list[str]:
  """``OUT/model.onnx``: ``images`` (B, H, W, 3) -> ``logits``; symbolic where ``shape`` is."""
  to_onnx = _to_onnx()
  import onnx  # pylint: disable=g-import-not-at-top

  model = to_onnx(
      serve,
      [jax.ShapeDtypeStruct(tuple(shape), jnp.float32)],
      model_name="ccnet",
      opset=int(opset),
      input_names=[INPUT_NAME],
      output_names=[OUTPUT_NAME],
      return_mode="proto",
  )
  _tidy(model, _symbolic_output_dims(serve, shape))
  onnx.checker.check_model(model, full_check=True)
  path = os.path.join(out_dir, ONNX_FILE)
  onnx.save_model(model, path)
  return [path]
