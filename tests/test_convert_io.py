"""Checkpoint reading: the torch-free .pth reader against torch.load, and refusal of code."""

import collections
import os

import ml_dtypes
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from ccnet_jax.convert import io  # pylint: disable=wrong-import-position


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


def test_torch_free_reader_equals_torch_load(tmp_path):
  tensors = _tensors()
  path = tmp_path / "weights.pth"
  torch.save({"state_dict": tensors, "meta": {"config": "recurrence=2", "epoch": 3}}, path)
  state, meta = io.read_checkpoint(path, use_torch=False)
  with_torch, meta_torch = io.read_checkpoint(path, use_torch=True)
  assert meta == meta_torch == {"config": "recurrence=2", "epoch": 3}
  assert list(state) == list(tensors) == list(with_torch)
  for name, tensor in tensors.items():
    want = _expected(tensor)
    for got in (state[name], with_torch[name]):
      assert got.dtype == want.dtype and got.shape == want.shape, name
      np.testing.assert_array_equal(got, want, err_msg=name)


def test_malicious_pickle_is_refused_without_running_it(tmp_path):
  marker = tmp_path / "executed"
  path = tmp_path / "evil.pth"
  torch.save({"weight": torch.zeros(2), "payload": _RunsACommand(marker)}, path)
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
  (tmp_path / "legacy.pth").write_bytes(b"\x80\x02not a zip")
  with pytest.raises(ValueError, match="not a zip-format PyTorch file"):
    io.read_state_dict(tmp_path / "legacy.pth", use_torch=False)
  (tmp_path / "w.h5").write_bytes(b"")
  with pytest.raises(ValueError, match="unknown checkpoint suffix"):
    io.read_state_dict(tmp_path / "w.h5")


def test_torch_free_reader_reads_a_module_state_dict(tmp_path):
  """nn.Module.state_dict() carries a _metadata attribute set while unpickling."""
  module = torch.nn.Sequential(torch.nn.Conv2d(2, 3, 1), torch.nn.BatchNorm2d(3))
  torch.save(module.state_dict(), tmp_path / "module.pth")
  state = io.read_state_dict(tmp_path / "module.pth", use_torch=False)
  assert list(state) == list(module.state_dict())
  for name, tensor in module.state_dict().items():
    np.testing.assert_array_equal(state[name], tensor.numpy(), err_msg=name)
