"""Reading PyTorch, safetensors and npz checkpoints into {name: numpy array}.

``.pth`` files go through ``torch.load(weights_only=True)`` when torch is
installed. Without torch, our own reader handles both formats of ``torch.save``:
the zip format (torch >= 1.6) and the legacy one (a pickle followed by the raw
storages) of the 2019 releases. It unpickles with an Unpickler that knows only
the tensor-rebuild functions, the storage types and OrderedDict, so a checkpoint
cannot run code on load. A damaged file of any format is one ValueError naming it.
"""

from __future__ import annotations

import collections
import importlib.util
import io
import os
import pickle
import tarfile
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
  """A storage's dtype and elements; legacy files append the elements after the pickle."""

  def __init__(self, dtype, data: bytes | None = None):
    self.dtype = np.dtype(dtype)
    self.array = None if data is None else np.frombuffer(data, dtype=self.dtype)


class _StorageView:
  """A legacy storage that views ``size`` elements of another from ``offset`` on."""

  def __init__(self, root: _Storage, offset: int, size: int):
    self.root, self.offset, self.size = root, offset, size

  @property
  def array(self):
    return self.root.array[self.offset : self.offset + self.size]


class _TensorRef:
  """A tensor as pickled: a storage, an offset, a shape and strides (made an array later)."""

  def __init__(self, storage, storage_offset, size, stride):
    self.storage, self.offset = storage, int(storage_offset)
    self.size, self.stride = tuple(size), tuple(stride)

  def to_numpy(self, path: str) -> np.ndarray:
    array = self.storage.array
    # as_strided trusts its arguments: a crafted file must not read outside the storage.
    if (
        self.offset < 0
        or len(self.size) != len(self.stride)
        or min(self.size + self.stride, default=0) < 0
    ):
      raise ValueError(f"{path}: a tensor has a negative offset, size or stride (corrupt file).")
    extent = sum((n - 1) * s for n, s in zip(self.size, self.stride)) + 1
    if min(self.size, default=1) > 0 and self.offset + extent > array.size:
      raise ValueError(f"{path}: a tensor reaches past the end of its storage (corrupt file).")
    if not self.size:
      return np.array(array[self.offset])
    view = np.lib.stride_tricks.as_strided(
        array[self.offset :], shape=self.size, strides=[s * array.itemsize for s in self.stride]
    )
    return np.array(view)


def _rebuild_tensor(
    storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None, metadata=None
):
  del requires_grad, backward_hooks, metadata
  return _TensorRef(storage, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, *args):
  del requires_grad, backward_hooks, args
  return data


class _StorageType:

  def __init__(self, name: str):
    self.dtype = STORAGE_DTYPES[name]


def _ascii(value) -> str:
  """Persistent-id fields are bytes in files written by Python 2."""
  return value.decode("ascii") if isinstance(value, bytes) else value


class _RestrictedUnpickler(pickle.Unpickler):
  """Resolves only what a state dict needs; anything else is refused."""

  _ALLOWED = {
      ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
      ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
      ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
      ("collections", "OrderedDict"): collections.OrderedDict,
  }

  def __init__(self, file, path: str):
    super().__init__(file)
    self._path = path
    self.storages: dict[str, _Storage] = {}

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
    if not (isinstance(pid, tuple) and len(pid) >= 5 and _ascii(pid[0]) == "storage"):
      raise pickle.UnpicklingError(f"{self._path}: unsupported persistent id {pid!r}.")
    storage_type, key = pid[1], _ascii(pid[2])
    if not isinstance(storage_type, _StorageType):
      raise pickle.UnpicklingError(f"{self._path}: unsupported storage type {storage_type!r}.")
    if key not in self.storages:
      self.storages[key] = self.new_storage(key, np.dtype(storage_type.dtype))
    view = pid[5] if len(pid) > 5 else None
    if view is None:
      return self.storages[key]
    _view_key, offset, size = view
    return _StorageView(self.storages[key], int(offset), int(size))

  def new_storage(self, key: str, dtype: np.dtype) -> _Storage:
    """The storage named ``key``; without its elements until the format provides them."""
    del key
    return _Storage(dtype)


class _ZipUnpickler(_RestrictedUnpickler):
  """``data.pkl`` of the zip format: storage ``key`` is the archive member ``data/key``."""

  def __init__(self, file, path: str, archive: zipfile.ZipFile, root: str, byteorder: str):
    super().__init__(file, path)
    self._archive, self._root = archive, root
    self._byteorder = "<" if byteorder == "little" else ">"

  def new_storage(self, key: str, dtype: np.dtype) -> _Storage:
    data = self._archive.read(f"{self._root}/data/{key}")
    return _Storage(dtype.newbyteorder(self._byteorder), data)


def _materialize(obj: Any, path: str) -> Any:
  """Replaces every pickled tensor in dicts, lists and tuples by its numpy array."""
  if isinstance(obj, _TensorRef):
    return obj.to_numpy(path)
  if isinstance(obj, dict):
    return type(obj)((k, _materialize(v, path)) for k, v in obj.items())
  if isinstance(obj, (list, tuple)):
    return type(obj)(_materialize(v, path) for v in obj)
  return obj


def read_torch_zip(path: str | os.PathLike) -> Any:
  """Loads a ``torch.save`` zip file (torch >= 1.6) without torch."""
  path = os.fspath(path)
  with zipfile.ZipFile(path) as archive:
    pickles = [n for n in archive.namelist() if n.endswith("/data.pkl")]
    if len(pickles) != 1:
      raise ValueError(f"{path}: expected one '<name>/data.pkl' in the archive, found {pickles}.")
    root = pickles[0][: -len("/data.pkl")]
    byteorder = "little"
    if f"{root}/byteorder" in archive.namelist():
      byteorder = archive.read(f"{root}/byteorder").decode().strip()
    unpickler = _ZipUnpickler(io.BytesIO(archive.read(pickles[0])), path, archive, root, byteorder)
    return _materialize(unpickler.load(), path)


# The legacy format (torch.save before 1.6, or with _use_new_zipfile_serialization=False) is
# five pickles, the magic number, the protocol version, the system info, the object and its
# sorted storage keys, followed by each storage as an int64 element count and its elements,
# both little-endian.
LEGACY_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL_VERSION = 1001


def _read_legacy_storages(file, keys, storages: dict[str, _Storage], path: str) -> None:
  for key in keys:
    key = _ascii(key)
    if key not in storages:
      raise ValueError(f"{path}: storage {key!r} is listed but no tensor uses it.")
    storage = storages[key]
    header = file.read(8)
    if len(header) < 8:
      raise ValueError(f"{path} is truncated: storage {key!r} is missing.")
    count = int(np.frombuffer(header, "<i8")[0])
    data = file.read(count * storage.dtype.itemsize)
    if count < 0 or len(data) < count * storage.dtype.itemsize:
      raise ValueError(f"{path} is truncated: storage {key!r} is incomplete.")
    storage.array = np.frombuffer(data, storage.dtype.newbyteorder("<"))
  missing = [k for k, s in storages.items() if s.array is None]
  if missing:
    raise ValueError(f"{path}: storages {missing[:5]} are used but not stored (corrupt file).")


def read_torch_legacy(path: str | os.PathLike) -> Any:
  """Loads a legacy (non-zip) ``torch.save`` file without torch."""
  path = os.fspath(path)
  with open(path, "rb") as file:
    if _RestrictedUnpickler(file, path).load() != LEGACY_MAGIC_NUMBER:
      raise ValueError(f"{path} is not a PyTorch checkpoint (no torch.save magic number).")
    version = _RestrictedUnpickler(file, path).load()
    if version != LEGACY_PROTOCOL_VERSION:
      raise ValueError(f"{path}: unsupported legacy torch.save protocol {version!r}.")
    _RestrictedUnpickler(file, path).load()  # System info: the data is little-endian anyway.
    unpickler = _RestrictedUnpickler(file, path)
    obj = unpickler.load()
    keys = _RestrictedUnpickler(file, path).load()
    _read_legacy_storages(file, keys, unpickler.storages, path)
  return _materialize(obj, path)


# What a damaged or foreign file makes the readers raise; each becomes one ValueError.
_CORRUPT_FILE_ERRORS = (
    pickle.UnpicklingError,
    EOFError,
    zipfile.BadZipFile,
    KeyError,
    IndexError,
    TypeError,
    AttributeError,
    UnicodeDecodeError,
    OSError,
    ValueError,
    OverflowError,
    MemoryError,
)


def read_torch_file(path: str | os.PathLike) -> Any:
  """Loads a ``torch.save`` file, zip or legacy format, without torch."""
  path = os.fspath(path)
  if tarfile.is_tarfile(path):
    raise ValueError(
        f"{path} is in torch's tar format (before torch 0.4), which needs torch:"
        " install it, or re-save the state dict as .safetensors."
    )
  reader = read_torch_zip if zipfile.is_zipfile(path) else read_torch_legacy
  try:
    return reader(path)
  except _CORRUPT_FILE_ERRORS as e:
    if str(e).startswith(path):
      raise ValueError(str(e)) from e
    raise _unreadable(path, "PyTorch checkpoint", e) from e


def _read_with_torch(path: str) -> Any:
  import torch  # pylint: disable=g-import-not-at-top

  try:
    return torch.load(path, map_location="cpu", weights_only=True)
  except pickle.UnpicklingError as e:
    raise ValueError(
        f"{path}: torch.load(weights_only=True) refused the file ({str(e).splitlines()[0]})."
        " Only plain state dicts are read; re-save the state dict alone."
    ) from e
  except (RuntimeError, *_CORRUPT_FILE_ERRORS) as e:
    raise _unreadable(path, "PyTorch checkpoint", e) from e


def _unreadable(path: str, kind: str, error: BaseException) -> ValueError:
  first_line = (str(error).splitlines() or [""])[0][:200]
  return ValueError(
      f"{path} is not a readable {kind} (empty, truncated or corrupt:"
      f" {type(error).__name__}: {first_line}). Download or convert it again."
  )


def _read_safetensors(path: str) -> dict[str, np.ndarray]:
  from safetensors import SafetensorError  # pylint: disable=g-import-not-at-top
  from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top

  try:
    return dict(load_file(path))
  except (SafetensorError, *_CORRUPT_FILE_ERRORS) as e:
    raise _unreadable(path, ".safetensors file", e) from e


def _read_npz(path: str) -> dict[str, np.ndarray]:
  try:
    with np.load(path, allow_pickle=False) as data:
      return {k: data[k] for k in data.files}
  except _CORRUPT_FILE_ERRORS as e:
    raise _unreadable(path, ".npz archive of arrays", e) from e


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
    return _read_safetensors(path), {}
  if suffix == ".npz":
    return _read_npz(path), {}
  if suffix not in (".pth", ".pt", ".bin", ".ckpt"):
    raise ValueError(
        f"{path}: unknown checkpoint suffix {suffix!r}; use .pth, .pt," " .safetensors or .npz."
    )
  if use_torch is None:
    use_torch = importlib.util.find_spec("torch") is not None
  raw = _read_with_torch(path) if use_torch else read_torch_file(path)
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


def read_state_dict(
    path: str | os.PathLike, *, use_torch: bool | None = None
) -> dict[str, np.ndarray]:
  """{name: numpy array} of a checkpoint file (see ``read_checkpoint``)."""
  return read_checkpoint(path, use_torch=use_torch)[0]
