"""The training loop: data -> sharded train step -> logs, checkpoints and evaluations.

One code path for one device, a host's devices and many hosts: the step is jitted
over a device mesh with the batch sharded on its data axis, every process feeds its
own shard of the data, and only process 0 writes logs. A run started on a workdir
with checkpoints resumes from the latest one: train state, RNG and data position, so
the resumed run sees exactly the batches and losses the uninterrupted one would.
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import ml_collections
import numpy as np
from flax import nnx
from PIL import Image

from ccnet_jax.data.labels import dataset_info
from ccnet_jax.data.pipeline import make_eval_loader, make_train_loader
from ccnet_jax.evaluation import Evaluator, format_results_table, model_predict_fn
from ccnet_jax.models.model_dir import load_state_into, save_model
from ccnet_jax.models.registry import build_model
from ccnet_jax.training.checkpointing import RunCheckpoints
from ccnet_jax.training.mesh import (
    global_batch, initialize_distributed, make_mesh, replicate, replicated,
)
from ccnet_jax.training.optim import make_optimizer
from ccnet_jax.training.preemption import StopRequest
from ccnet_jax.training.state import create_train_state, merge_model
from ccnet_jax.training.step import make_train_step
from ccnet_jax.training.summaries import MetricWriter, ProgressLine


def _overlay_images(directory: str, limit: int) -> dict[str, np.ndarray]:
  """The first ``limit`` prediction overlays the evaluator wrote, for TensorBoard."""
  if not os.path.isdir(directory):
    return {}
  names = sorted(n for n in os.listdir(directory) if n.endswith("_overlay.png"))[:limit]
  return {
      f"eval/{name[:-len('_overlay.png')]}": np.asarray(Image.open(os.path.join(directory, name)))
      for name in names
  }


class TrainingDiverged(RuntimeError):
  """The loss or the gradients stopped being finite."""


def preprocessing(data_config: ml_collections.ConfigDict) -> dict[str, Any]:
  """The input normalisation a model trained with ``data_config`` expects."""
  return {
      "channel_order": data_config.channel_order,
      "mean": list(data_config.mean),
      "std": list(data_config.std),
  }


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


def _best_record(workdir: str) -> dict[str, Any]:
  path = os.path.join(workdir, "best", "metrics.json")
  if os.path.exists(path):
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  return {"step": None, "miou": -1.0}


class ModelEvaluation:
  """Evaluates models of one architecture on the configured split, compiling once."""

  def __init__(self, config: ml_collections.ConfigDict, model: nnx.Module, mesh):
    self.config = config
    self.info = dataset_info(config.data.name)
    self.mesh = mesh
    predict_fn, _ = model_predict_fn(model)
    self.evaluator = Evaluator(
        predict_fn, eval_config=config.eval, num_classes=self.info.num_classes, mesh=mesh,
        ignore_label=self.info.ignore_label,
    )

  def __call__(self, model: nnx.Module, *, out_dir: str | None) -> dict[str, Any]:
    """mIoU, per-class IoU, accuracies of ``model`` (eval mode); PNGs to ``out_dir``."""
    per_process = max(self.config.eval.batch_size // jax.process_count(), 1)
    # Every array on every device of the mesh: a loaded model sits on one device only.
    state = jax.device_put(nnx.split(model)[1], replicated(self.mesh))
    return self.evaluator.evaluate(
        state,
        make_eval_loader(self.config.data, batch_size=per_process),
        out_dir=out_dir,
        palette=self.info.palette,
        normalization=self.config.data,
    )


def initial_model(config: ml_collections.ConfigDict) -> nnx.Module:
  """The model a run starts from: fresh, with ``train.init_from`` loaded when named."""
  model = build_model(config.model, seed=config.train.seed)
  if config.train.init_from:
    load_state_into(model, config.train.init_from, part=config.train.init_part)
  return model


def train_and_evaluate(
    config: ml_collections.ConfigDict, workdir: str, *, stop_after_steps: int | None = None
) -> dict[str, Any]:
  """Trains (resuming when ``workdir`` has checkpoints) and evaluates; returns the last metrics.

  ``stop_after_steps`` ends this invocation early, after a checkpoint, as a time-limited
  job would; the next invocation resumes.
  """
  initialize_distributed()
  workdir = os.path.abspath(workdir)
  mesh = make_mesh()
  check_config(config, mesh.size)
  total_steps = config.train.total_steps
  # The data first: a missing dataset is reported before any compilation.
  loader = make_train_loader(
      config.data, global_batch_size=config.train.global_batch_size, seed=config.train.seed
  )

  model = initial_model(config)
  tx, schedule = make_optimizer(config.optim, total_steps)
  graphdef, state = create_train_state(model, tx, seed=config.train.seed)
  state = replicate(state, mesh)

  checkpoints = RunCheckpoints(
      os.path.join(workdir, "checkpoints"), keep=config.train.keep_checkpoints
  )
  step = 0
  if checkpoints.latest_step() is not None:
    state, position, step = checkpoints.restore(state)
    loader.set_state(position)
    if jax.process_index() == 0:
      print(f"Resuming from the checkpoint of step {step} in {workdir}.", flush=True)

  train_step = make_train_step(graphdef, tx, schedule, config.loss, mesh)
  writer = MetricWriter(workdir)
  progress = ProgressLine(total_steps, config.train.global_batch_size)
  best = _best_record(workdir)
  evaluation = ModelEvaluation(config, merge_model(graphdef, state, train=False), mesh)
  metrics: dict[str, Any] = {}

  def save(step):
    checkpoints.save(step, state, loader.get_state())

  def evaluate_now(step):
    nonlocal best
    model = merge_model(graphdef, state, train=False)
    out_dir = os.path.join(workdir, "predictions", f"step_{step}")
    results = evaluation(model, out_dir=out_dir)
    writer.write_scalars(
        step, {"eval/miou": results["miou"], "eval/pixel_accuracy": results["pixel_accuracy"]}
    )
    writer.write_images(step, _overlay_images(out_dir, config.train.num_summary_images))
    if results["miou"] > best["miou"]:
      best = {"step": step, "miou": float(results["miou"])}
      export("best", extra={"metrics.json": best})
    return results

  def export(name, extra=None):
    """Writes the current model as a model directory WORKDIR/name (process 0 only)."""
    if jax.process_index() != 0:
      return
    # Replicated arrays: process 0's own copy is the whole value.
    local = jax.tree.map(lambda x: np.asarray(x.addressable_data(0)), state)
    directory = save_model(
        os.path.join(workdir, name), merge_model(graphdef, local, train=False), config.model,
        preprocessing=preprocessing(config.data),
    )
    for filename, content in (extra or {}).items():
      with open(os.path.join(directory, filename), "w", encoding="utf-8") as f:
        json.dump(content, f)

  try:
    with StopRequest() as stop:
      while step < total_steps:
        state, step_metrics = train_step(state, global_batch(next(loader), mesh))
        step += 1
        scalars = {k: float(v) for k, v in jax.device_get(step_metrics).items()}
        if not scalars.pop("finite"):
          raise TrainingDiverged(
              f"The loss or the gradients became NaN/Inf at step {step} (loss"
              f" {scalars['loss']}); stopped without saving, the last good checkpoint"
              f" (step {checkpoints.latest_step()}) in {workdir} is intact. Lower"
              " --config.optim.learning_rate or set --config.optim.clip_grad_norm, check the"
              " data, then rerun to resume."
          )
        if step % config.train.log_every == 0 or step == total_steps:
          writer.write_scalars(step, {f"train/{k}": v for k, v in scalars.items()})
          progress.update(step, scalars)
        finishing = step == total_steps or bool(stop) or step == stop_after_steps
        if step % config.train.checkpoint_every == 0 or finishing:
          save(step)
        if config.train.eval_every and step % config.train.eval_every == 0 and step < total_steps:
          metrics = evaluate_now(step)
        if stop:
          print(f"Received {stop.signal_name}: saved the checkpoint of step {step};"
                " run the same command again to resume.", flush=True)
          return {"step": step, "stopped": stop.signal_name}
        if step == stop_after_steps:
          return {"step": step, "stopped": "stop_after_steps"}

    metrics = evaluate_now(total_steps)
    export("model")
    if jax.process_index() == 0:
      print(format_results_table(metrics, dataset_info(config.data.name).class_names))
    return {"step": step, **metrics}
  finally:
    writer.close()
    checkpoints.close()
