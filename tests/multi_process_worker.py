"""One process of a two-process run that checkpoints, is stopped, and resumes.

Run as ``python -m tests.multi_process_worker --phase=first|resume --process_id=I
--num_processes=N --port=P --weights=FILE --data_root=DIR --checkpoints=DIR``.
Each process joins ``jax.distributed`` on localhost, reads its own shard of a generated
PASCAL VOC tree through ``make_train_loader`` (which takes the process layout from JAX),
and trains the tiny CCNet of ``distributed_worker`` on the global batch:

* ``first`` trains ``--steps`` steps and, after step ``--save_at``, saves the train state
  and its data position with ``RunCheckpoints`` (every process takes part);
* ``resume`` restores that checkpoint into a fresh state and loader and trains on to
  ``--steps``.

Each prints one JSON line: the losses by step, a checksum of the parameters at
``--save_at`` and the records (identified by their label, see ``tests.helpers.voc_tree``)
this process read at each step.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle

import numpy as np

from tests import distributed_worker as worker

GLOBAL_BATCH, CROP = 4, (16, 16)


def data_config(root: str):
  from ccnet_jax.data.config import data_config as preset

  config = preset("voc")
  config.root, config.crop_size = root, CROP
  return config


def records_read(labels: np.ndarray) -> list[int]:
  """The record of each crop: the one class of its (constant) label, 255 being padding."""
  return [int(np.setdiff1d(np.unique(label), [255])[0]) for label in labels]


def as_model_labels(labels: np.ndarray) -> np.ndarray:
  """Record classes 0..20 folded into the tiny model's classes; 255 stays ignored."""
  return np.where(labels == 255, 255, labels % worker.CLASSES).astype(np.int32)


def run(args) -> dict:
  import jax

  from ccnet_jax.data.pipeline import make_train_loader
  from ccnet_jax.models.preprocessing import Preprocessing
  from ccnet_jax.training.checkpointing import RunCheckpoints
  from ccnet_jax.training.mesh import global_batch, make_mesh, replicate
  from ccnet_jax.training.step import make_train_step

  mesh = make_mesh()
  with open(args.weights, "rb") as f:
    weights = pickle.load(f)
  model_def, tx, schedule, host_state = worker.build(weights=weights)
  config = data_config(args.data_root)
  preprocessing = Preprocessing.from_config(config)
  train_step = make_train_step(model_def, tx, schedule, worker.loss_config(), mesh, preprocessing)
  state = replicate(host_state, mesh)
  loader = make_train_loader(config, global_batch_size=GLOBAL_BATCH, seed=0)
  checkpoints = RunCheckpoints(args.checkpoints, keep=2)
  step, checksum = 0, None
  if args.phase == "resume":
    state, position, step = checkpoints.restore(state)
    loader.set_state(position)
    checksum = worker.params_checksum(
        jax.device_get(jax.tree.map(lambda x: x.addressable_data(0), state.params))
    )
  losses, records, compiled = {}, {}, None
  while step < args.steps:
    batch = next(loader)
    records[step + 1] = records_read(batch["label"])
    batch = global_batch(dict(batch, label=as_model_labels(batch["label"])), mesh)
    if compiled is None:
      compiled = train_step.lower(state, batch).compile()
      worker.wait_for_all(
          f"{args.checkpoints}.ready-{args.phase}", args.process_id, args.num_processes
      )
    state, metrics = compiled(state, batch)
    step += 1
    losses[step] = float(metrics["loss"])
    if args.phase == "first" and step == args.save_at:
      checkpoints.save(step, state, loader.get_state())
      checksum = worker.params_checksum(
          jax.device_get(jax.tree.map(lambda x: x.addressable_data(0), state.params))
      )
  checkpoints.close()
  return {
      "process_id": jax.process_index(),
      "process_count": jax.process_count(),
      "losses": losses,
      "records": records,
      "checksum": checksum,
  }


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--phase", choices=("first", "resume"), required=True)
  parser.add_argument("--process_id", type=int, required=True)
  parser.add_argument("--num_processes", type=int, required=True)
  parser.add_argument("--port", type=int, required=True)
  parser.add_argument("--weights", required=True, help="pickle of initial_weights()")
  parser.add_argument("--data_root", required=True)
  parser.add_argument("--checkpoints", required=True)
  parser.add_argument("--steps", type=int, default=4)
  parser.add_argument("--save_at", type=int, default=2)
  args = parser.parse_args()

  worker.join(args.process_id, args.num_processes, args.port)
  import jax

  print(json.dumps(run(args)), flush=True)
  jax.distributed.shutdown()


if __name__ == "__main__":
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  main()
