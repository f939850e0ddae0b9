"""The device mesh, the two shardings of training, and multi-process start-up.

One code path for 1 device, 8 devices and many hosts: the batch is sharded over
the mesh axis 'data' and everything else is replicated, so ``jit`` reduces
gradients and BatchNorm statistics over the global batch by itself.
"""

from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from ccnet_jax.training import lost_process

DATA_AXIS = "data"


def make_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A 1-D mesh with axis 'data' over ``devices`` (default: every device of every process)."""
  devices = jax.devices() if devices is None else list(devices)
  if not devices:
    raise ValueError("make_mesh needs at least one device.")
  return Mesh(np.asarray(devices), (DATA_AXIS,))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over 'data', other axes whole."""
  return NamedSharding(mesh, P(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
  """A full copy on every device."""
  return NamedSharding(mesh, P())


def replicate(tree: Any, mesh: Mesh) -> Any:
  """Places a host-identical pytree (e.g. a fresh TrainState) replicated on the mesh.

  Works with several processes too: each contributes its own identical copy. Arrays
  already replicated on ``mesh`` (a train state's weights) are kept as they are, and
  typed PRNG keys (a model's RNG streams) are placed through their key data.
  """
  sharding = replicated(mesh)

  def place(x):
    if isinstance(x, jax.Array) and x.sharding == sharding:
      return x
    if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
      data = place(jax.random.key_data(x))
      return jax.random.wrap_key_data(data, impl=jax.random.key_impl(x))
    return jax.make_array_from_process_local_data(sharding, np.asarray(x))

  return jax.tree.map(place, tree)


def global_batch(local_batch: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Assembles each process's slice of the batch into global arrays sharded over 'data'.

  Every process passes its own ``local_batch`` (leading axis = per-process batch);
  the global batch is their concatenation in process order. The per-process
  batch must divide evenly over the process's devices on the mesh.
  """
  sharding = batch_sharding(mesh)
  local_devices = sum(d.process_index == jax.process_index() for d in mesh.devices.flat)
  arrays = {}
  for name, value in local_batch.items():
    value = np.asarray(value)
    if value.ndim == 0 or value.shape[0] % local_devices:
      raise ValueError(
          f"batch[{name!r}] has shape {value.shape}: its leading (batch) axis must be a "
          f"multiple of this process's {local_devices} devices; change the batch size."
      )
    arrays[name] = jax.make_array_from_process_local_data(sharding, value)
  return arrays


def _several_processes() -> bool:
  """Whether the environment describes a multi-process job."""
  counts = (
      os.environ.get("JAX_NUM_PROCESSES"),  # with JAX_COORDINATOR_ADDRESS, JAX_PROCESS_ID
      os.environ.get("SLURM_NTASKS") if "SLURM_JOB_ID" in os.environ else None,
      os.environ.get("OMPI_COMM_WORLD_SIZE"),  # mpirun (Open MPI)
  )
  if any(count and int(count) > 1 for count in counts):
    return True
  hosts = os.environ.get("TPU_WORKER_HOSTNAMES", "")
  return len([h for h in hosts.split(",") if h]) > 1


def initialize_distributed(heartbeat_timeout_seconds: int = 100) -> bool:
  """Starts ``jax.distributed`` when several processes run; a no-op for one. Returns whether.

  Must run before any other JAX call. A multi-process job is recognised from:

  * ``JAX_NUM_PROCESSES`` > 1, with ``JAX_COORDINATOR_ADDRESS`` (host:port of
    process 0) and ``JAX_PROCESS_ID`` (0 .. n-1) -- any launcher;
  * SLURM (``SLURM_JOB_ID`` and ``SLURM_NTASKS`` > 1), Open MPI
    (``OMPI_COMM_WORLD_SIZE`` > 1) or multi-host Cloud TPU
    (``TPU_WORKER_HOSTNAMES`` lists several hosts): JAX detects these itself.

  A process that sends no heartbeat for ``heartbeat_timeout_seconds`` is declared lost
  and JAX's runtime ends the others; their standard error goes through
  ``lost_process``'s relay, which turns the runtime's report into one line. JAX's
  preemption service is not started: its SIGTERM handler would replace the trainer's,
  which agrees on the step to stop at through a collective instead (``preemption``).
  On CPU the cross-process collectives are gloo (``jax_cpu_collectives_implementation``).
  """
  if not _several_processes():
    return False
  if not isinstance(heartbeat_timeout_seconds, int) or heartbeat_timeout_seconds < 1:
    raise ValueError(
        f"train.heartbeat_timeout_seconds={heartbeat_timeout_seconds!r} must be a positive"
        " whole number of seconds; set --config.train.heartbeat_timeout_seconds=N."
    )
  settings = {}
  if "JAX_NUM_PROCESSES" in os.environ:
    missing = [v for v in ("JAX_COORDINATOR_ADDRESS", "JAX_PROCESS_ID") if v not in os.environ]
    if missing:
      raise ValueError(
          f"JAX_NUM_PROCESSES is set but {', '.join(missing)} is not; set all three "
          "(JAX_COORDINATOR_ADDRESS=host:port, JAX_NUM_PROCESSES, JAX_PROCESS_ID)."
      )
    settings = dict(
        coordinator_address=os.environ["JAX_COORDINATOR_ADDRESS"],
        num_processes=int(os.environ["JAX_NUM_PROCESSES"]),
        process_id=int(os.environ["JAX_PROCESS_ID"]),
    )
  lost_process.start(heartbeat_timeout_seconds)
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.config.update("jax_enable_preemption_service", False)
  jax.distributed.initialize(**settings, heartbeat_timeout_seconds=heartbeat_timeout_seconds)
  return True
