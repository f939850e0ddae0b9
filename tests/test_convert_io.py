"""Checkpoint reading: the torch-free .pth reader against torch.load, and refusal of code.

Both formats of torch.save are covered: the zip format (torch >= 1.6) and the legacy one
(``_use_new_zipfile_serialization=False``, the format of the 2019 releases).
"""

import collections
import os
import pickle

import ml_dtypes
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from ccnet_jax.convert import io  # pylint: disable=wrong-import-position
from tests.helpers import run_command
from tests.processes import run_python


class _RunsACommand:
  """Unpickling this runs a shell command: what a malicious checkpoint would do."""

  def __init__(self, marker):
    self.marker = marker

  def __reduce__(self):
    return (os.system, (f"touch {self.marker}",))


def _tensors():
  base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
  return collections.OrderedDict(
      conv=torch.randn(3, 2, 3, 3),
      transposed=base.t(),  # Non-contiguous: strides are honoured.
      row=base[2],  # A view at a storage offset, sharing base's storage.
      base=base,
      half=torch.randn(5).half(),
      bfloat=torch.randn(4).bfloat16(),
      steps=torch.tensor(7),  # 0-d int64 (num_batches_tracked).
      flags=torch.tensor([True, False]),
      double=torch.randn(2, 2, dtype=torch.float64),
      param=torch.nn.Parameter(torch.randn(2)),
  )


def _expected(tensor):
  if tensor.dtype == torch.bfloat16:
    return tensor.float().numpy().astype(ml_dtypes.bfloat16)
  return tensor.detach().numpy()


FORMATS = {"zip": True, "legacy": False}  # -> torch.save's _use_new_zipfile_serialization


def _save(obj, path, file_format):
  torch.save(obj, path, _use_new_zipfile_serialization=FORMATS[file_format])
  return path


# Run first in a child process: `import torch` fails there, as on a machine without PyTorch.
_BLOCK_TORCH = (
    "import sys\n"
    "sys.modules['torch'] = None\n"
    "try:\n"
    "  import torch\n"
    "  raise SystemExit('torch is importable')\n"
    "except ImportError:\n"
    "  pass\n"
)


def _run_without_torch(code, *args):
  return run_python("-c", _BLOCK_TORCH + code, *args)


def _assert_equal_to_torch(state, tensors):
  assert list(state) == list(tensors)
  for name, tensor in tensors.items():
    want = _expected(tensor)
    assert state[name].dtype == want.dtype and state[name].shape == want.shape, name
    np.testing.assert_array_equal(state[name], want, err_msg=name)


@pytest.mark.parametrize("file_format", list(FORMATS))
def test_torch_free_reader_equals_torch_load(tmp_path, file_format):
  tensors = _tensors()
  path = tmp_path / "weights.pth"
  _save({"state_dict": tensors, "meta": {"config": "recurrence=2", "epoch": 3}}, path, file_format)
  state, meta = io.read_checkpoint(path, use_torch=False)
  with_torch, meta_torch = io.read_checkpoint(path, use_torch=True)
  assert meta == meta_torch == {"config": "recurrence=2", "epoch": 3}
  assert list(state) == list(tensors) == list(with_torch)
  for name, tensor in tensors.items():
    want = _expected(tensor)
    for got in (state[name], with_torch[name]):
      assert got.dtype == want.dtype and got.shape == want.shape, name
      np.testing.assert_array_equal(got, want, err_msg=name)


@pytest.mark.parametrize("file_format", list(FORMATS))
def test_malicious_pickle_is_refused_without_running_it(tmp_path, file_format):
  marker = tmp_path / "executed"
  path = _save(
      {"weight": torch.zeros(2), "payload": _RunsACommand(marker)},
      tmp_path / "evil.pth",
      file_format,
  )
  with pytest.raises(ValueError, match=r"refusing to load (posix|os)\.system"):
    io.read_state_dict(path, use_torch=False)
  with pytest.raises(ValueError, match="weights_only=True"):
    io.read_state_dict(path, use_torch=True)
  assert not marker.exists()


def test_safetensors_npz_and_bad_files(tmp_path):
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top

  arrays = {"a.weight": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.ones(2, np.int64)}
  save_file(arrays, str(tmp_path / "w.safetensors"))
  np.savez(tmp_path / "w.npz", **arrays)
  for name in ("w.safetensors", "w.npz"):
    state = io.read_state_dict(tmp_path / name)
    assert sorted(state) == sorted(arrays)
    for key, value in arrays.items():
      np.testing.assert_array_equal(state[key], value)
  with pytest.raises(FileNotFoundError, match="missing.pth"):
    io.read_state_dict(tmp_path / "missing.pth")
  (tmp_path / "junk.pth").write_bytes(b"\x80\x02not a checkpoint")
  with pytest.raises(ValueError, match="junk.pth is not a readable PyTorch checkpoint"):
    io.read_state_dict(tmp_path / "junk.pth", use_torch=False)
  (tmp_path / "w.h5").write_bytes(b"")
  with pytest.raises(ValueError, match="unknown checkpoint suffix"):
    io.read_state_dict(tmp_path / "w.h5")


@pytest.mark.parametrize("file_format", list(FORMATS))
def test_torch_free_reader_reads_a_module_state_dict(tmp_path, file_format):
  """nn.Module.state_dict() carries a _metadata attribute set while unpickling."""
  module = torch.nn.Sequential(torch.nn.Conv2d(2, 3, 1), torch.nn.BatchNorm2d(3))
  _save(module.state_dict(), tmp_path / "module.pth", file_format)
  state = io.read_state_dict(tmp_path / "module.pth", use_torch=False)
  assert list(state) == list(module.state_dict())
  for name, tensor in module.state_dict().items():
    np.testing.assert_array_equal(state[name], tensor.numpy(), err_msg=name)


def _official_release():
  from tests import torch_reference  # pylint: disable=g-import-not-at-top

  net = torch_reference.randomise_(
      torch_reference.OfficialCCNet(
          18, num_classes=5, recurrence=1, width=8, out_channels=16, dsn_channels=12
      ),
      seed=3,
  )
  return {"module." + k: v for k, v in net.state_dict_like_release().items()}


def test_both_formats_are_read_and_converted_where_torch_cannot_be_imported(tmp_path):
  """Read: equal to the tensors saved. Converted (a legacy-format official CCNet): equal, array
  for array, to the model converted with torch.load from the zip format, whose outputs
  test_convert.py compares to the PyTorch network's."""
  from ccnet_jax.convert.__main__ import main  # pylint: disable=g-import-not-at-top
  from ccnet_jax.models import model_dir  # pylint: disable=g-import-not-at-top

  tensors = _tensors()
  release = _official_release()
  for file_format in FORMATS:
    _save(
        {"state_dict": tensors, "meta": {"epoch": 3}}, tmp_path / f"{file_format}.pth", file_format
    )
    _save(release, tmp_path / f"release_{file_format}.pth", file_format)
  result = _run_without_torch(
      "import pickle\n"
      "from ccnet_jax import cli\n"
      "from ccnet_jax.convert import io\n"
      "from ccnet_jax.convert.__main__ import main\n"
      "files = {f: io.read_checkpoint(f'{sys.argv[1]}/{f}.pth') for f in ('zip', 'legacy')}\n"
      "pickle.dump(files, open(f'{sys.argv[1]}/read.pkl', 'wb'))\n"
      "cli.run(main, ['convert', 'official', f'{sys.argv[1]}/release_legacy.pth',\n"
      "               f'{sys.argv[1]}/from_legacy', '--recurrence', '1'])\n",
      tmp_path,
  )
  assert result.returncode == 0, result.stderr
  with open(tmp_path / "read.pkl", "rb") as f:
    read = pickle.load(f)
  for file_format in FORMATS:
    state, meta = read[file_format]
    assert meta == {"epoch": 3}, file_format
    _assert_equal_to_torch(state, tensors)

  assert (
      run_command(
          main, "official", tmp_path / "release_zip.pth", tmp_path / "from_zip", "--recurrence", "1"
      )
      == 0
  )
  got = model_dir.read_arrays(tmp_path / "from_legacy")
  want = model_dir.read_arrays(tmp_path / "from_zip")
  assert sorted(got) == sorted(want)
  for name, value in want.items():
    np.testing.assert_array_equal(got[name], value, err_msg=name)


def _cut(path, keep_fraction):
  data = path.read_bytes()
  path.write_bytes(data[: int(len(data) * keep_fraction)])
  return path


@pytest.mark.parametrize("file_format", list(FORMATS))
def test_damaged_files_are_one_value_error_naming_them(tmp_path, file_format):
  """Without torch: files cut at several points, and a text file."""
  tensors = {"w": torch.arange(64, dtype=torch.float32)}
  paths = [
      _cut(_save(tensors, tmp_path / f"cut{int(keep * 100)}.pth", file_format), keep)
      for keep in (0.0, 0.3, 0.7, 0.99)
  ]
  paths.append(tmp_path / "text.pth")
  paths[-1].write_text("a state dict, honestly\n")
  for path in paths:
    with pytest.raises(ValueError, match=f"^{path}"):
      io.read_state_dict(path, use_torch=False)


# Runs `python -m ccnet_jax.convert official FILE OUT` once per file in one child process (one
# import of torch and JAX instead of one per file), each with its stderr in FILE.err and its
# exit status in FILE.status; an uncaught exception would end the child with a traceback.
_CONVERT_EACH = """
import contextlib, sys
from ccnet_jax import cli
from ccnet_jax.convert.__main__ import main
for path in sys.argv[1:]:
  with open(path + '.err', 'w') as err, contextlib.redirect_stderr(err):
    try:
      cli.run(main, ['ccnet_jax.convert', 'official', path, path + '.out'])
    except SystemExit as e:
      status = e.code
  with open(path + '.status', 'w') as f:
    f.write(str(status))
"""


def test_junk_inputs_to_the_command_are_one_error_line_naming_the_file(tmp_path):
  """With torch installed (torch.load's own failures), as a user would run the command."""
  weights = {"w": torch.arange(256, dtype=torch.float32)}
  files = {
      "text.pth": b"these are not the weights you are looking for\n",
      "empty.pth": b"",
      "garbage.safetensors": b"\xff" * 64,
      "empty.npz": b"",
      "garbage.npz": b"PK\x03\x04 not really a zip archive",
  }
  for name, content in files.items():
    (tmp_path / name).write_bytes(content)
  for file_format in FORMATS:
    path = _save(weights, tmp_path / f"truncated_{file_format}.pth", file_format)
    _cut(path, 0.6)
  paths = sorted(str(p) for p in tmp_path.iterdir())
  result = run_python("-c", _CONVERT_EACH, *paths)
  assert result.returncode == 0, result.stderr
  assert len(paths) == 7
  for path in paths:
    with open(path + ".status", encoding="utf-8") as f:
      assert f.read() == "1", path
    with open(path + ".err", encoding="utf-8") as f:
      lines = f.read().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {path} "), (path, lines)
    assert not os.path.exists(path + ".out"), path


def test_a_tensor_larger_than_its_storage_is_refused(tmp_path):
  """A legacy file whose storage was shrunk under its tensor: the reader must not read past
  the storage (numpy's as_strided would)."""
  path = _save({"w": torch.arange(8, dtype=torch.float32)}, tmp_path / "w.pth", "legacy")
  data = path.read_bytes()
  tail = np.int64(8).tobytes() + np.arange(8, dtype=np.float32).tobytes()
  assert data.endswith(tail)
  path.write_bytes(data[: -len(tail)] + np.int64(4).tobytes() + np.arange(4, dtype="<f4").tobytes())
  with pytest.raises(ValueError, match=f"^{path}: a tensor reaches past the end of its storage"):
    io.read_state_dict(path, use_torch=False)
