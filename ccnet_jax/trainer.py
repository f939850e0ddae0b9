"""The training loop: data -> sharded train step -> logs, checkpoints and evaluations.

One code path for one device, a host's devices and many hosts: the step is jitted
over a device mesh with the batch sharded on its data axis, every process feeds its
own shard of the data, and only process 0 writes logs. A run started on a workdir
with checkpoints resumes from the newest readable one: train state, RNG and data
position, so the resumed run sees exactly the batches and losses the uninterrupted
one would. SIGTERM/SIGINT end the run after the current step with a checkpoint; with
several processes, all of them agree on that step (``training.preemption``).
"""

from __future__ import annotations

import contextlib
import json
import os
from typing import Any

import jax
import ml_collections
import numpy as np
from flax import nnx

from ccnet_jax.data.labels import dataset_info
from ccnet_jax.data.pipeline import make_train_loader
from ccnet_jax.errors import TrainingDiverged, UserError
from ccnet_jax.evaluation.metrics import format_results_table
from ccnet_jax.evaluation.run import ModelEvaluation
from ccnet_jax.models.model_dir import load_state_into, save_model
from ccnet_jax.models.preprocessing import Preprocessing
from ccnet_jax.models.registry import build_model
from ccnet_jax.training import lost_process
from ccnet_jax.training.checkpointing import RunCheckpoints
from ccnet_jax.training.mesh import global_batch, initialize_distributed, make_mesh, replicate
from ccnet_jax.training.optim import make_optimizer
from ccnet_jax.training.preemption import StopRequest
from ccnet_jax.training.state import ModelDef, TrainState, create_train_state, merge_model
from ccnet_jax.training.step import make_train_step
from ccnet_jax.training.summaries import MetricWriter, ProgressLine
from ccnet_jax.training.workdir import (
    BEST_MODEL_DIR,
    CHECKPOINTS_DIR,
    FINAL_MODEL_DIR,
    WorkdirLock,
    check_same_config,
    check_writable,
    write_config,
)

__all__ = ["TrainingDiverged", "check_config", "initial_model", "train_and_evaluate"]

INTERVALS = ("log_every", "eval_every", "checkpoint_every")


def _check_intervals(train: ml_collections.ConfigDict) -> None:
  for name in INTERVALS:
    value = train[name]
    if not isinstance(value, int) or value < 0:
      raise ValueError(
          f"train.{name}={value!r} must be a whole number of steps, or 0 for never;"
          f" set --config.train.{name}=N."
      )
  if not isinstance(train.total_steps, int) or train.total_steps < 1:
    raise ValueError(f"train.total_steps={train.total_steps!r} must be a positive whole number.")


def _check_crop_size(data: ml_collections.ConfigDict) -> None:
  crop = data.crop_size
  if (
      not isinstance(crop, (tuple, list))
      or len(crop) != 2
      or not all(isinstance(x, int) and x > 0 for x in crop)
  ):
    raise ValueError(
        f"data.crop_size={crop!r} must be two positive integers (height, width),"
        " e.g. --config.data.crop_size=512,512."
    )


def check_config(config: ml_collections.ConfigDict, num_devices: int) -> None:
  """Fails early, with the field to change, on settings that cannot run."""
  info = dataset_info(config.data.name)
  if config.model.num_classes != info.num_classes:
    raise ValueError(
        f"model.num_classes={config.model.num_classes} but {config.data.name} has"
        f" {info.num_classes} classes; set --config.model.num_classes={info.num_classes}."
    )
  batch = config.train.global_batch_size
  if batch % num_devices or batch % jax.process_count():
    raise ValueError(
        f"train.global_batch_size={batch} must be a multiple of the {num_devices} devices"
        f" and {jax.process_count()} processes."
    )
  _check_intervals(config.train)
  _check_crop_size(config.data)


def initial_model(config: ml_collections.ConfigDict) -> nnx.Module:
  """The model a run starts from: fresh, with ``train.init_from`` loaded when named."""
  model = build_model(config.model, seed=config.train.seed)
  if config.train.init_from:
    load_state_into(model, config.train.init_from, part=config.train.init_part)
  return model


def _due(step: int, every: int) -> bool:
  """Whether an action repeated ``every`` steps falls on ``step`` (0: never)."""
  return bool(every) and step % every == 0


def _best_record(workdir: str) -> dict[str, Any]:
  path = os.path.join(workdir, BEST_MODEL_DIR, "metrics.json")
  if os.path.exists(path):
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  return {"step": None, "miou": -1.0}


def write_model_dir(
    workdir: str,
    name: str,
    model_def: ModelDef,
    state: TrainState,
    config: ml_collections.ConfigDict,
    extra: dict | None = None,
) -> None:
  """Writes the model of ``state`` as the model directory WORKDIR/name (process 0 only)."""
  if jax.process_index() != 0:
    return
  # Replicated arrays: process 0's own copy is the whole value.
  local = jax.tree.map(lambda x: np.asarray(x.addressable_data(0)), state)
  directory = save_model(
      os.path.join(workdir, name),
      merge_model(model_def, local, train=False),
      config.model,
      preprocessing=Preprocessing.from_config(config.data),
  )
  for filename, content in (extra or {}).items():
    with open(os.path.join(directory, filename), "w", encoding="utf-8") as f:
      json.dump(content, f)


class Run:
  """What one invocation of the loop works with: config, workdir, and its writers."""

  def __init__(self, config, workdir, model_def, checkpoints, writer, evaluation):
    self.config = config
    self.workdir = workdir
    self.model_def = model_def
    self.checkpoints = checkpoints
    self.writer = writer
    self.evaluation = evaluation
    self.best = _best_record(workdir)

  def evaluate(self, step: int, state: TrainState) -> dict[str, Any]:
    """Evaluates ``state``, logs it, and exports it as WORKDIR/best when it is the best yet."""
    model = merge_model(self.model_def, state, train=False)
    out_dir = os.path.join(self.workdir, "predictions", f"step_{step}")
    evaluation = self.evaluation(model, out_dir=out_dir)
    results = evaluation.metrics
    self.writer.write_scalars(
        step, {"eval/miou": results["miou"], "eval/pixel_accuracy": results["pixel_accuracy"]}
    )
    overlays = list(evaluation.overlays.items())[: self.config.train.num_summary_images]
    self.writer.write_images(step, {f"eval/{name}": image for name, image in overlays})
    if results["miou"] > self.best["miou"]:
      self.best = {"step": step, "miou": float(results["miou"])}
      write_model_dir(
          self.workdir,
          BEST_MODEL_DIR,
          self.model_def,
          state,
          self.config,
          extra={"metrics.json": self.best},
      )
    return results

  def check_finite(self, step: int, scalars: dict[str, float]) -> None:
    if scalars.pop("finite"):
      return
    kept = self.checkpoints.latest_step()
    kept = (
        f"the last good checkpoint (step {kept}) in {self.workdir} is intact"
        if kept
        else "no checkpoint was written yet, so a rerun starts again from step 0"
    )
    raise TrainingDiverged(
        f"The loss or the gradients became NaN/Inf at step {step} (loss {scalars['loss']});"
        f" stopped without saving; {kept}. Lower --config.optim.learning_rate or set"
        " --config.optim.clip_grad_norm, check the data, then rerun."
    )


def _open_checkpoints(config, workdir: str) -> RunCheckpoints:
  directory = os.path.join(workdir, CHECKPOINTS_DIR)
  if os.path.isdir(directory) and any(n.isdigit() for n in os.listdir(directory)):
    check_same_config(workdir, config)
  checkpoints = RunCheckpoints(directory, keep=config.train.keep_checkpoints)
  if jax.process_index() == 0:
    write_config(workdir, config)
  return checkpoints


def _resume(checkpoints: RunCheckpoints, state: TrainState, loader, workdir: str):
  """(state, step) of the newest readable checkpoint, the loader moved to its position."""
  restored = checkpoints.restore_newest(state)
  if restored is None:
    return state, 0
  state, position, step = restored
  loader.set_state(position)
  if jax.process_index() == 0:
    print(f"Resuming from the checkpoint of step {step} in {workdir}.", flush=True)
  return state, step


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains (resuming when ``workdir`` has checkpoints) and evaluates; returns the last metrics.

  A SIGTERM or SIGINT ends the run after the current step, with its checkpoint: the result
  is then ``{'step', 'stopped': signal name}``, and the next invocation resumes. With
  several processes, all stop at the same step, and a failure waits for JAX's runtime to
  say whether a process was lost (see ``training.lost_process``).
  """
  heartbeat = config.train.heartbeat_timeout_seconds
  several = initialize_distributed(heartbeat)
  workdir = os.path.abspath(workdir)
  check_writable(workdir)
  # Installed by the loop; the signals stay caught until every process has left.
  stop = StopRequest()
  try:
    with WorkdirLock(workdir) if jax.process_index() == 0 else contextlib.nullcontext():
      result = _train(config, workdir, stop)
    if several:
      jax.distributed.shutdown()
    return result
  except Exception as error:
    if several and not isinstance(error, (UserError, TrainingDiverged)):
      lost_process.await_report(heartbeat)
    raise
  finally:
    stop.restore()


def _train(config, workdir: str, stop: StopRequest) -> dict[str, Any]:
  mesh = make_mesh()
  check_config(config, mesh.size)
  checkpoints = _open_checkpoints(config, workdir)
  try:
    return _loop(config, workdir, mesh, checkpoints, stop)
  finally:
    checkpoints.close()


def _loop(config, workdir, mesh, checkpoints, stop: StopRequest) -> dict[str, Any]:
  total_steps = config.train.total_steps
  # The data first: a missing dataset is reported before any compilation.
  loader = make_train_loader(
      config.data, global_batch_size=config.train.global_batch_size, seed=config.train.seed
  )
  tx, schedule = make_optimizer(config.optim, total_steps)
  model_def, state = create_train_state(initial_model(config), tx, seed=config.train.seed)
  state, step = _resume(checkpoints, replicate(state, mesh), loader, workdir)
  train_step = make_train_step(
      model_def, tx, schedule, config.loss, mesh, Preprocessing.from_config(config.data)
  )
  writer = MetricWriter(workdir, start_step=step)
  progress = ProgressLine(total_steps, config.train.global_batch_size)
  evaluation = ModelEvaluation(config, mesh)
  run = Run(config, workdir, model_def, checkpoints, writer, evaluation)
  every = config.train
  saved = step
  try:
    stop.install()
    while step < total_steps:
      state, step_metrics = train_step(state, global_batch(next(loader), mesh))
      step += 1
      scalars = {k: float(v) for k, v in jax.device_get(step_metrics).items()}
      run.check_finite(step, scalars)
      if _due(step, every.log_every) or step == total_steps:
        writer.write_scalars(step, {f"train/{k}": v for k, v in scalars.items()})
        progress.update(step, scalars)
      evaluate = _due(step, every.eval_every) and step < total_steps
      # Saved before an evaluation too: a preemption during it loses nothing.
      if _due(step, every.checkpoint_every) or evaluate or step == total_steps:
        checkpoints.save(step, state, loader.get_state())
        saved = step
      if evaluate:
        run.evaluate(step, state)
      # Every process asks at the same point of every step, so all stop at the same one.
      signalled = stop.agree()
      if signalled:
        return _stop(signalled, step, saved, state, loader, checkpoints)

    metrics = run.evaluate(total_steps, state)
    write_model_dir(workdir, FINAL_MODEL_DIR, model_def, state, config)
    if jax.process_index() == 0:
      print(format_results_table(metrics, dataset_info(config.data.name).class_names))
    return {"step": step, **metrics}
  finally:
    writer.close()


def _stop(signalled, step, saved, state, loader, checkpoints) -> dict[str, Any]:
  """Ends the invocation at ``step`` with its checkpoint on disk; a rerun resumes there."""
  if saved != step:
    checkpoints.save(step, state, loader.get_state())
  if jax.process_index() == 0:
    print(_stop_message(signalled, step), flush=True)
  return {"step": step, "stopped": next(iter(signalled.values()))}


def _stop_message(signalled: dict[int, str], step: int) -> str:
  count = jax.process_count()
  if count == 1:
    return (
        f"Received {signalled[0]}: saved the checkpoint of step {step};"
        " run the same command again to resume."
    )
  received = ", ".join(f"{name} on process {i}" for i, name in sorted(signalled.items()))
  return (
      f"Received {received} of {count}: all {count} processes saved the checkpoint of step"
      f" {step}; run the same command again on every process to resume."
  )
