"""The mesh helpers on the 8 host devices of the test process, and distributed start-up."""

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from ccnet_jax.training import mesh as mesh_lib


def test_make_mesh_defaults_to_every_device_on_the_data_axis():
  mesh = mesh_lib.make_mesh()
  assert mesh.axis_names == ("data",)
  assert list(mesh.devices.flat) == jax.devices()
  assert mesh_lib.make_mesh(jax.devices()[:1]).size == 1


def test_global_batch_shards_the_leading_axis():
  mesh = mesh_lib.make_mesh()
  local = {
      "image": np.arange(16 * 2 * 3, dtype=np.float32).reshape(16, 2, 3),
      "label": np.arange(16, dtype=np.int32),
  }
  batch = mesh_lib.global_batch(local, mesh)
  for name, value in local.items():
    assert batch[name].sharding.spec == P("data")
    np.testing.assert_array_equal(batch[name], value)
    shards = sorted(batch[name].addressable_shards, key=lambda s: s.index[0].start)
    assert [s.data.shape[0] for s in shards] == [2] * 8
    np.testing.assert_array_equal(shards[3].data, value[6:8])


def test_global_batch_rejects_a_batch_that_does_not_divide():
  with pytest.raises(ValueError, match=r"batch\['label'\].*multiple of this process's 8"):
    mesh_lib.global_batch({"label": np.zeros((6, 2), np.int32)}, mesh_lib.make_mesh())


def test_replicate_puts_a_copy_on_every_device():
  mesh = mesh_lib.make_mesh()
  tree = mesh_lib.replicate({"w": np.arange(5.0)}, mesh)
  assert tree["w"].sharding.is_fully_replicated
  assert len(tree["w"].addressable_shards) == 8
  np.testing.assert_array_equal(tree["w"], np.arange(5.0))


@pytest.mark.parametrize(
    "env,expected",
    [
        ({}, False),
        ({"JAX_NUM_PROCESSES": "1"}, False),
        ({"SLURM_JOB_ID": "1", "SLURM_NTASKS": "1"}, False),
        ({"SLURM_NTASKS": "4"}, False),  # not inside a SLURM job
        ({"SLURM_JOB_ID": "1", "SLURM_NTASKS": "4"}, True),
        ({"OMPI_COMM_WORLD_SIZE": "2"}, True),
        ({"TPU_WORKER_HOSTNAMES": "host-a,host-b"}, True),
        ({"TPU_WORKER_HOSTNAMES": "host-a"}, False),
    ],
)
def test_several_processes_is_read_from_the_environment(monkeypatch, env, expected):
  for name in (
      "JAX_NUM_PROCESSES",
      "SLURM_JOB_ID",
      "SLURM_NTASKS",
      "OMPI_COMM_WORLD_SIZE",
      "TPU_WORKER_HOSTNAMES",
  ):
    monkeypatch.delenv(name, raising=False)
  for name, value in env.items():
    monkeypatch.setenv(name, value)
  assert mesh_lib._several_processes() is expected


def test_initialize_distributed_is_a_no_op_for_one_process(monkeypatch):
  monkeypatch.delenv("JAX_NUM_PROCESSES", raising=False)
  monkeypatch.delenv("OMPI_COMM_WORLD_SIZE", raising=False)
  monkeypatch.delenv("TPU_WORKER_HOSTNAMES", raising=False)
  monkeypatch.delenv("SLURM_JOB_ID", raising=False)
  assert mesh_lib.initialize_distributed() is False


def test_initialize_distributed_names_missing_variables(monkeypatch):
  monkeypatch.setenv("JAX_NUM_PROCESSES", "2")
  monkeypatch.delenv("JAX_PROCESS_ID", raising=False)
  monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "localhost:1234")
  with pytest.raises(ValueError, match="JAX_PROCESS_ID"):
    mesh_lib.initialize_distributed()


@pytest.mark.parametrize("timeout", [0, -5, 2.5])
def test_initialize_distributed_refuses_a_bad_heartbeat_timeout(monkeypatch, timeout):
  monkeypatch.setenv("JAX_NUM_PROCESSES", "2")
  with pytest.raises(ValueError, match=r"train\.heartbeat_timeout_seconds=.*positive whole"):
    mesh_lib.initialize_distributed(timeout)


def test_replicate_keeps_replicated_arrays_and_places_typed_keys():
  mesh = mesh_lib.make_mesh()
  placed = mesh_lib.replicate({"w": np.arange(3.0)}, mesh)["w"]
  tree = mesh_lib.replicate({"w": placed, "key": jax.random.key(7)}, mesh)
  assert tree["w"] is placed
  assert tree["key"].sharding.is_fully_replicated and len(tree["key"].addressable_shards) == 8
  np.testing.assert_array_equal(
      jax.random.key_data(tree["key"]), jax.random.key_data(jax.random.key(7))
  )
