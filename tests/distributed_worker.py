"""A tiny CCNet training run, shared by the train-step tests and their multi-process check.

Run as ``python -m tests.distributed_worker --process_id=I --num_processes=N --port=P``:
each process joins ``jax.distributed`` on localhost, feeds its slice of one
fixed global batch through ``global_batch``, trains a few steps and prints the
per-step losses and a parameter checksum as one JSON line.
"""

from __future__ import annotations

import argparse
import functools
import json
import os

import numpy as np

BATCH, SIZE, CLASSES, IGNORE = 8, 33, 5, 255


def tiny_model_config(dtype: str = "float32"):
  from ccnet_jax import models

  config = models.model_config("ccnet_r101_official", num_classes=CLASSES, dtype=dtype)
  config.backbone.update(depth=18, base_width=8, output_stride=8)
  config.head.update(channels=16, out_channels=16)
  config.aux.channels = 16
  return config


def loss_config():
  from ccnet_jax.training import losses

  config = losses.default_loss_config()
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


@functools.lru_cache(maxsize=None)
def _float32_model_state():
  """The initial weights; built once per process (eager initialisation is slow on CPU)."""
  from flax import nnx

  from ccnet_jax import models

  return nnx.state(models.build_model(tiny_model_config(), seed=0))


@functools.lru_cache(maxsize=None)
def build(dtype: str = "float32", total_steps: int = 10):
  """(model_def, tx, schedule, host_state): identical in every process (fixed seeds).

  Every dtype gets the same float32 initial weights: the model is traced
  abstractly in ``dtype`` and the weights poured in.
  """
  import jax
  from flax import nnx

  from ccnet_jax import models, training
  from ccnet_jax.training import optim

  model = nnx.eval_shape(lambda: models.build_model(tiny_model_config(dtype), seed=0))
  nnx.update(model, _float32_model_state())
  tx, schedule = optim.make_optimizer(optim.default_optim_config(), total_steps)
  model_def, state = training.create_train_state(model, tx, seed=0)
  return model_def, tx, schedule, jax.device_get(state)


def params_checksum(params) -> float:
  import jax

  return float(sum(np.abs(np.asarray(x, np.float64)).sum() for x in jax.tree.leaves(params)))


def train(mesh, local_batch, steps: int):
  """Per-step losses and the final parameter checksum of ``steps`` steps on ``mesh``."""
  import jax

  from ccnet_jax import training

  model_def, tx, schedule, host_state = build()
  train_step = training.make_train_step(model_def, tx, schedule, loss_config(), mesh)
  state = training.replicate(host_state, mesh)
  batch = training.global_batch(local_batch, mesh)
  losses = []
  for _ in range(steps):
    state, metrics = train_step(state, batch)
    losses.append(float(metrics["loss"]))
  params = jax.device_get(jax.tree.map(lambda x: x.addressable_data(0), state.params))
  return losses, params_checksum(params)


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--process_id", type=int, required=True)
  parser.add_argument("--num_processes", type=int, required=True)
  parser.add_argument("--port", type=int, required=True)
  parser.add_argument("--steps", type=int, default=3)
  args = parser.parse_args()

  import jax

  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(
      coordinator_address=f"localhost:{args.port}",
      num_processes=args.num_processes,
      process_id=args.process_id,
  )
  from ccnet_jax import training

  mesh = training.make_mesh()
  per_process = BATCH // args.num_processes
  rows = slice(args.process_id * per_process, (args.process_id + 1) * per_process)
  local_batch = {name: value[rows] for name, value in fixed_batch().items()}
  losses, checksum = train(mesh, local_batch, args.steps)
  print(json.dumps({
      "process_id": args.process_id,
      "global_devices": jax.device_count(),
      "losses": losses,
      "checksum": checksum,
  }), flush=True)
  jax.distributed.shutdown()


if __name__ == "__main__":
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  main()
