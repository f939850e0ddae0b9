"""Reading PyTorch, safetensors and npz checkpoints into {name: numpy array}.

``.pth`` files go through ``torch.load(weights_only=True)`` when torch is
installed. Without torch, a small reader of PyTorch's zip format unpickles
``data.pkl`` with an Unpickler that knows only the tensor-rebuild functions,
the storage types and OrderedDict, so a checkpoint cannot run code on load.
"""

from __future__ import annotations

import collections
import io
import os
import pickle
import zipfile
from typing import Any, Mapping

import ml_dtypes
import numpy as np

# Storage classes named in PyTorch pickles -> numpy dtypes.
STORAGE_DTYPES = {
    "DoubleStorage": np.float64,
    "FloatStorage": np.float32,
    "HalfStorage": np.float16,
    "BFloat16Storage": ml_dtypes.bfloat16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}

# Keys under which training frameworks nest the model's state dict.
_NESTED_KEYS = ("state_dict", "model", "model_state_dict", "net")


class _Storage:
  """A storage's dtype and raw bytes, rebuilt into arrays by ``_rebuild_tensor``."""

  def __init__(self, dtype, data: bytes):
    self.array = np.frombuffer(data, dtype=dtype)


def _rebuild_tensor(storage, storage_offset, size, stride, requires_grad=False,
                    backward_hooks=None, metadata=None):
  del requires_grad, backward_hooks, metadata
  size, stride = tuple(size), tuple(stride)
  if not size:
    return np.array(storage.array[storage_offset])
  itemsize = storage.array.itemsize
  view = np.lib.stride_tricks.as_strided(
      storage.array[storage_offset:], shape=size, strides=[s * itemsize for s in stride]
  )
  return np.array(view)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, *args):
  del requires_grad, backward_hooks, args
  return data


class _StorageType:
  def __init__(self, name: str):
    self.dtype = STORAGE_DTYPES[name]


class _RestrictedUnpickler(pickle.Unpickler):
  """Resolves only what a state dict needs; anything else is refused."""

  _ALLOWED = {
      ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
      ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
      ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
      ("collections", "OrderedDict"): collections.OrderedDict,
  }

  def __init__(self, file, archive: zipfile.ZipFile, root: str, byteorder: str, path: str):
    super().__init__(file)
    self._archive, self._root, self._byteorder, self._path = archive, root, byteorder, path
    self._storages: dict[str, _Storage] = {}

  def find_class(self, module, name):
    if (module, name) in self._ALLOWED:
      return self._ALLOWED[(module, name)]
    if module == "torch" and name in STORAGE_DTYPES:
      return _StorageType(name)
    raise pickle.UnpicklingError(
        f"{self._path}: refusing to load {module}.{name}: only tensors, storages and"
        " OrderedDict are allowed in a state dict without torch."
    )

  def persistent_load(self, pid):
    if not (isinstance(pid, tuple) and pid and pid[0] == "storage"):
      raise pickle.UnpicklingError(f"{self._path}: unsupported persistent id {pid!r}.")
    _, storage_type, key, _location, _numel = pid
    if not isinstance(storage_type, _StorageType):
      raise pickle.UnpicklingError(f"{self._path}: unsupported storage type {storage_type!r}.")
    if key not in self._storages:
      dtype = np.dtype(storage_type.dtype).newbyteorder(
          "<" if self._byteorder == "little" else ">"
      )
      data = self._archive.read(f"{self._root}/data/{key}")
      self._storages[key] = _Storage(dtype, data)
    return self._storages[key]


def read_torch_zip(path: str | os.PathLike) -> Any:
  """Loads a ``torch.save`` zip file without torch (tensors become numpy arrays)."""
  path = os.fspath(path)
  if not zipfile.is_zipfile(path):
    raise ValueError(
        f"{path} is not a zip-format PyTorch file (the legacy format needs torch:"
        " install it, or re-save with torch >= 1.6 / as .safetensors)."
    )
  with zipfile.ZipFile(path) as archive:
    pickles = [n for n in archive.namelist() if n.endswith("/data.pkl")]
    if len(pickles) != 1:
      raise ValueError(f"{path}: expected one '<name>/data.pkl' in the archive, found {pickles}.")
    root = pickles[0][: -len("/data.pkl")]
    byteorder = "little"
    if f"{root}/byteorder" in archive.namelist():
      byteorder = archive.read(f"{root}/byteorder").decode().strip()
    unpickler = _RestrictedUnpickler(
        io.BytesIO(archive.read(pickles[0])), archive, root, byteorder, path
    )
    try:
      return unpickler.load()
    except pickle.UnpicklingError as e:
      raise ValueError(str(e)) from e


def _read_with_torch(path: str) -> Any:
  import torch  # pylint: disable=g-import-not-at-top

  try:
    return torch.load(path, map_location="cpu", weights_only=True)
  except pickle.UnpicklingError as e:
    raise ValueError(
        f"{path}: torch.load(weights_only=True) refused the file ({str(e).splitlines()[0]})."
        " Only plain state dicts are read; re-save the state dict alone."
    ) from e


def _to_numpy(value: Any) -> np.ndarray:
  if isinstance(value, np.ndarray):
    return value
  if hasattr(value, "detach"):  # torch.Tensor
    tensor = value.detach().cpu()
    if str(tensor.dtype) == "torch.bfloat16":
      return tensor.float().numpy().astype(ml_dtypes.bfloat16)
    return tensor.numpy()
  return np.asarray(value)


def _is_array(value: Any) -> bool:
  return isinstance(value, np.ndarray) or hasattr(value, "detach")


def read_checkpoint(
    path: str | os.PathLike, *, use_torch: bool | None = None
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
  """Reads (state_dict, meta) from .pth/.pt, .safetensors or .npz.

  A checkpoint nesting its weights under 'state_dict' (mmseg) or 'model' is
  unwrapped; its 'meta' entry (mmseg's config text, class names) is returned.
  ``use_torch=None`` uses torch when importable; False forces the torch-free reader.
  """
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"Checkpoint {path} not found.")
  suffix = os.path.splitext(path)[1].lower()
  if suffix == ".safetensors":
    from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top

    return dict(load_file(path)), {}
  if suffix == ".npz":
    with np.load(path, allow_pickle=False) as data:
      return {k: data[k] for k in data.files}, {}
  if suffix not in (".pth", ".pt", ".bin", ".ckpt"):
    raise ValueError(f"{path}: unknown checkpoint suffix {suffix!r}; use .pth, .pt,"
                     " .safetensors or .npz.")
  if use_torch is None:
    try:
      import torch  # pylint: disable=g-import-not-at-top,unused-import

      use_torch = True
    except ImportError:
      use_torch = False
  raw = _read_with_torch(path) if use_torch else read_torch_zip(path)
  if not isinstance(raw, Mapping):
    raise ValueError(f"{path} holds a {type(raw).__name__}, not a state dict.")
  meta = raw.get("meta") if isinstance(raw.get("meta"), Mapping) else {}
  for key in _NESTED_KEYS:
    if isinstance(raw.get(key), Mapping):
      raw = raw[key]
      break
  state_dict = {k: _to_numpy(v) for k, v in raw.items() if _is_array(v)}
  if not state_dict:
    raise ValueError(f"{path} holds no tensors (top-level keys: {sorted(raw)[:10]}).")
  return state_dict, dict(meta)


def read_state_dict(path: str | os.PathLike, *, use_torch: bool | None = None
                    ) -> dict[str, np.ndarray]:
  """{name: numpy array} of a checkpoint file (see ``read_checkpoint``)."""
  return read_checkpoint(path, use_torch=use_torch)[0]
