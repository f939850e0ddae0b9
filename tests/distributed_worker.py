"""A tiny CCNet training run, shared by the train-step tests and their multi-process check.

Run as ``python -m tests.distributed_worker --process_id=I --num_processes=N --port=P
--weights=FILE``:
each process joins ``jax.distributed`` on localhost, feeds its slice of one
fixed global batch through ``global_batch``, trains a few steps and prints the
per-step losses and a parameter checksum as one JSON line.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import pickle
import socket
import subprocess
import sys
import tempfile
import time

import numpy as np

BATCH, SIZE, CLASSES, IGNORE = 8, 33, 5, 255


def tiny_model_config(dtype: str = "float32"):
  from tests import helpers

  return helpers.tiny_model_config(num_classes=CLASSES, dtype=dtype)


def loss_config():
  from configs import common

  config = common.loss_config()
  config.ohem = True
  config.ohem_min_kept = 2000  # below the batch's valid pixels: OHEM really mines
  return config


def fixed_batch(seed: int = 0) -> dict[str, np.ndarray]:
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, CLASSES, size=(BATCH, SIZE, SIZE)).astype(np.int32)
  labels[rng.random(labels.shape) < 0.1] = IGNORE
  return {
      "image": rng.normal(size=(BATCH, SIZE, SIZE, 3)).astype(np.float32),
      "label": labels,
  }


# Tests only compile tiny programs: skip XLA's slow backend optimisations.
FAST_COMPILE = {"xla_backend_optimization_level": 0}


@functools.lru_cache(maxsize=None)
def initial_weights() -> dict:
  """Float32 params and BN statistics of the fixed initial model (numpy pure dicts).

  Initialisation is compiled as one program (eager initialisation is slow on a
  busy CPU); the multi-process workers receive the result from the test.
  """
  import jax
  from flax import nnx

  from ccnet_jax.models.registry import build_model

  def init():
    model = build_model(tiny_model_config(), seed=0)
    return {
        "params": nnx.to_pure_dict(nnx.state(model, nnx.Param)),
        "batch_stats": nnx.to_pure_dict(nnx.state(model, nnx.BatchStat)),
    }

  return jax.device_get(jax.jit(init).lower().compile(FAST_COMPILE)())


def _model_with(weights: dict, dtype: str):
  """The model traced abstractly in ``dtype``, with ``weights`` poured in."""
  from flax import nnx

  from ccnet_jax.models.registry import build_model

  model = nnx.eval_shape(lambda: build_model(tiny_model_config(dtype), seed=0))
  for kind, name in ((nnx.Param, "params"), (nnx.BatchStat, "batch_stats")):
    state = nnx.state(model, kind)
    nnx.replace_by_pure_dict(state, weights[name])
    nnx.update(model, state)
  nnx.reseed(model, default=0)  # concrete dropout streams (rekeyed every step anyway)
  return model


def build(dtype: str = "float32", weights: dict | None = None, total_steps: int = 10):
  """(model_def, tx, schedule, host_state): identical in every process.

  Every dtype starts from the same float32 weights (``initial_weights()`` by default).
  """
  import jax

  from ccnet_jax.training import optim
  from ccnet_jax.training.state import create_train_state
  from configs import common

  model = _model_with(initial_weights() if weights is None else weights, dtype)
  tx, schedule = optim.make_optimizer(common.optim_config(), total_steps)
  model_def, state = create_train_state(model, tx, seed=0)
  return model_def, tx, schedule, jax.device_get(state)


def params_checksum(params) -> float:
  import jax

  return float(sum(np.abs(np.asarray(x, np.float64)).sum() for x in jax.tree.leaves(params)))


def train(mesh, local_batch, steps: int, weights: dict, ready=lambda: None):
  """Per-step losses and the final parameter checksum of ``steps`` steps on ``mesh``.

  ``ready`` is called between compiling the step and running it (a barrier when several
  processes train).
  """
  import jax

  from ccnet_jax.training.mesh import global_batch, replicate
  from ccnet_jax.training.step import make_train_step

  model_def, tx, schedule, host_state = build(weights=weights)
  train_step = make_train_step(model_def, tx, schedule, loss_config(), mesh)
  state = replicate(host_state, mesh)
  batch = global_batch(local_batch, mesh)
  train_step = train_step.lower(state, batch).compile()
  ready()
  losses = []
  for _ in range(steps):
    state, metrics = train_step(state, batch)
    losses.append(float(metrics["loss"]))
  params = jax.device_get(jax.tree.map(lambda x: x.addressable_data(0), state.params))
  return losses, params_checksum(params)


def free_port() -> int:
  """A localhost port free now, for the jax.distributed coordinator."""
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def worker_env(repo: str) -> dict:
  """Two host devices per process; the low backend optimisation only shortens compilation."""
  return dict(
      os.environ,
      JAX_PLATFORMS="cpu",
      XLA_FLAGS="--xla_force_host_platform_device_count=2 " "--xla_backend_optimization_level=0",
      PYTHONPATH=os.pathsep.join(filter(None, [repo, os.environ.get("PYTHONPATH")])),
  )


def run_processes(
    module: str, process_args: list[list[str]], *, repo: str, timeout: float
) -> list[dict]:
  """Runs ``python -m module ARGS`` for each ARGS at once; each one's last stdout line as JSON.

  Waits on the processes' states, not a clock: the first to fail ends the others at once
  (a peer left alone would wait for it up to the hang bound, ``timeout``). Their output
  goes to files, so a chatty process never blocks on a full pipe while another is awaited.
  """
  with contextlib.ExitStack() as stack:
    outputs = [
        [stack.enter_context(tempfile.TemporaryFile("w+")) for _ in range(2)] for _ in process_args
    ]
    processes = [
        subprocess.Popen(
            [sys.executable, "-m", module, *args],
            cwd=repo,
            env=worker_env(repo),
            stdout=stdout,
            stderr=stderr,
            text=True,
        )
        for args, (stdout, stderr) in zip(process_args, outputs)
    ]

    def read(file):
      file.seek(0)
      return file.read()

    try:
      deadline = time.monotonic() + timeout
      while any(process.poll() is None for process in processes):
        for process, (_, stderr) in zip(processes, outputs):
          assert process.poll() in (None, 0), read(stderr)[-3000:]
        assert time.monotonic() < deadline, f"{module} still running after {timeout} s (hung)"
        time.sleep(0.2)
      for process, (_, stderr) in zip(processes, outputs):
        assert process.returncode == 0, read(stderr)[-3000:]
      return [json.loads(read(stdout).strip().splitlines()[-1]) for stdout, _ in outputs]
    finally:
      for process in processes:
        if process.poll() is None:
          process.kill()
          process.wait()


def join(process_id: int, num_processes: int, port: int) -> None:
  """Joins the localhost jax.distributed job (gloo collectives between the CPU processes).

  Every timeout of the job is the hang bound: on a loaded machine a process that starts,
  imports or compiles ten times slower than its peer is late, not dead (``run_processes``
  ends the others when one fails).
  """
  import jax

  from tests.processes import HANG_TIMEOUT

  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.config.update("jax_cpu_get_local_topology_timeout_minutes", HANG_TIMEOUT // 60)
  jax.config.update("jax_cpu_get_global_topology_timeout_minutes", HANG_TIMEOUT // 60)
  jax.distributed.initialize(
      coordinator_address=f"localhost:{port}",
      num_processes=num_processes,
      process_id=process_id,
      initialization_timeout=HANG_TIMEOUT,
      heartbeat_timeout_seconds=HANG_TIMEOUT,
      shutdown_timeout_seconds=HANG_TIMEOUT,
  )


def wait_for_all(directory: str, process_id: int, num_processes: int) -> None:
  """Returns once every process has called it with ``directory`` (marker files in it).

  Called between compiling a step and running it: the processes' first collective must
  start within gloo's 30 s connection timeout of each other, and on a busy machine
  compilation alone can take longer than that.
  """
  os.makedirs(directory, exist_ok=True)
  with open(os.path.join(directory, str(process_id)), "w"):
    pass
  while len(os.listdir(directory)) < num_processes:
    time.sleep(0.2)


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--process_id", type=int, required=True)
  parser.add_argument("--num_processes", type=int, required=True)
  parser.add_argument("--port", type=int, required=True)
  parser.add_argument("--steps", type=int, default=3)
  parser.add_argument("--weights", required=True, help="pickle of initial_weights()")
  args = parser.parse_args()

  join(args.process_id, args.num_processes, args.port)
  import jax

  from ccnet_jax.training.mesh import make_mesh

  mesh = make_mesh()
  per_process = BATCH // args.num_processes
  rows = slice(args.process_id * per_process, (args.process_id + 1) * per_process)
  local_batch = {name: value[rows] for name, value in fixed_batch().items()}
  with open(args.weights, "rb") as f:
    weights = pickle.load(f)
  ready = functools.partial(
      wait_for_all, f"{args.weights}.ready", args.process_id, args.num_processes
  )
  losses, checksum = train(mesh, local_batch, args.steps, weights, ready)
  print(
      json.dumps(
          {
              "process_id": args.process_id,
              "global_devices": jax.device_count(),
              "losses": losses,
              "checksum": checksum,
          }
      ),
      flush=True,
  )
  jax.distributed.shutdown()


if __name__ == "__main__":
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  main()
