"""``eval.py``'s job: find the model a user names, evaluate it, write the results.

Also :class:`ModelEvaluation`, the dataset evaluation the training loop runs between
steps. A training checkpoint is read through ``training.checkpointing`` (weights only,
no optimiser); nothing here depends on the training loop.
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import ml_collections
import numpy as np
from flax import nnx

from ccnet_jax.data.labels import dataset_info
from ccnet_jax.data.pipeline import make_eval_loader
from ccnet_jax.errors import UserError
from ccnet_jax.evaluation.evaluator import Evaluator, model_predict_fn
from ccnet_jax.evaluation.metrics import format_results_table
from ccnet_jax.models.model_dir import load_model
from ccnet_jax.training.checkpointing import load_checkpoint_model
from ccnet_jax.training.mesh import make_mesh, replicate
from ccnet_jax.training.workdir import config_differences, saved_config


class ModelEvaluation:
  """Evaluates models of one architecture on the configured split, compiling once."""

  def __init__(self, config: ml_collections.ConfigDict, model: nnx.Module, mesh):
    self.config = config
    self.info = dataset_info(config.data.name)
    self.mesh = mesh
    predict_fn, _ = model_predict_fn(model)
    self.evaluator = Evaluator(
        predict_fn,
        eval_config=config.eval,
        num_classes=self.info.num_classes,
        mesh=mesh,
        ignore_label=self.info.ignore_label,
    )

  def __call__(self, model: nnx.Module, *, out_dir: str | None) -> dict[str, Any]:
    """mIoU, per-class IoU, accuracies of ``model`` (eval mode); PNGs to ``out_dir``."""
    per_process = max(self.config.eval.batch_size // jax.process_count(), 1)
    # Every array on every device of the mesh: a loaded model sits on one device only.
    state = replicate(nnx.split(model)[1], self.mesh)
    return self.evaluator.evaluate(
        state,
        make_eval_loader(self.config.data, batch_size=per_process),
        out_dir=out_dir,
        palette=self.info.palette,
        normalization=self.config.data,
    )

  def overlays(self, limit: int) -> dict[str, np.ndarray]:
    """The first ``limit`` prediction overlays of the last evaluation, by image name."""
    return dict(list(self.evaluator.saved_overlays.items())[:limit])


def _check_run_model(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Names the model fields in which ``config`` differs from the run's recorded config."""
  saved = saved_config(workdir)
  differences = config_differences(saved, config, within="model.") if saved else []
  if differences:
    raise UserError(
        f"the checkpoints in {workdir} hold another model than the config describes"
        f" ({'; '.join(differences)}); drop these overrides or pass the saved values (see"
        f" {workdir}/config.json)."
    )


def _from_checkpoint(config: ml_collections.ConfigDict, workdir: str):
  """The model of the newest training checkpoint in ``workdir``."""
  if not os.path.isdir(workdir):
    raise FileNotFoundError(
        f"--workdir={workdir} does not exist: name the workdir of a training run, or pass"
        " --model=<model directory>."
    )
  directory = os.path.join(workdir, "checkpoints")
  if not os.path.isdir(directory) or not any(name.isdigit() for name in os.listdir(directory)):
    raise FileNotFoundError(
        f"No checkpoint in {directory}: train first (python train.py --config ..."
        f" --workdir {workdir}) or pass --model=<model directory>."
    )
  _check_run_model(config, workdir)
  model, step = load_checkpoint_model(config.model, directory)
  return model, f"checkpoint of step {step}", None


def load_named_model(config: ml_collections.ConfigDict, workdir: str, which: str):
  """(model in eval mode, description, preprocessing) for --model: latest, best, final or a
  directory. ``preprocessing`` is the normalisation a model directory records (None for a
  training checkpoint, whose config is the run's)."""
  if which == "latest":
    return _from_checkpoint(config, workdir)
  directory = {"best": os.path.join(workdir, "best"), "final": os.path.join(workdir, "model")}.get(
      which, which
  )
  if not os.path.isdir(directory):
    raise FileNotFoundError(
        f"--model={which}: {directory} is not a model directory (one written by training as"
        " WORKDIR/best or WORKDIR/model, or by python -m ccnet_jax.convert)."
    )
  model, info = load_model(directory)
  if info["model"].num_classes != config.model.num_classes:
    raise ValueError(
        f"--model={which}: {directory} predicts {info['model'].num_classes} classes but"
        f" {config.data.name} has {config.model.num_classes}; evaluate it with a matching config."
    )
  return model, directory, info["preprocessing"]


def evaluate_from_workdir(
    config: ml_collections.ConfigDict, workdir: str, which: str = "latest"
) -> dict[str, Any]:
  """Evaluates the named model; prints the table, writes metrics.json and PNGs to WORKDIR/eval."""
  workdir = os.path.abspath(workdir)
  model, description, preprocessing = load_named_model(config, workdir, which)
  if preprocessing is not None:
    # A converted model expects its own input normalisation (official CCNet: BGR, mean only).
    config = config.copy_and_resolve_references()
    config.data.update(
        channel_order=preprocessing["channel_order"],
        mean=tuple(preprocessing["mean"]),
        std=tuple(preprocessing["std"]),
    )
  out_dir = os.path.join(workdir, "eval")
  metrics = ModelEvaluation(config, model, make_mesh())(model, out_dir=out_dir)
  if jax.process_index() == 0:
    print(f"Evaluated the {description} on {config.data.name}/{config.data.eval_split}:")
    print(format_results_table(metrics, dataset_info(config.data.name).class_names))
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "metrics.json"), "w", encoding="utf-8") as f:
      json.dump(metrics, f, indent=1, default=float)
  return metrics
