"""``eval.py``'s job: find the model a user names, evaluate it, write the results."""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import ml_collections

from ccnet_jax.data.labels import dataset_info
from ccnet_jax.evaluation import format_results_table
from ccnet_jax.models.model_dir import load_model
from ccnet_jax.models.registry import build_model
from ccnet_jax.training.checkpointing import RunCheckpoints
from ccnet_jax.training.mesh import make_mesh
from ccnet_jax.training.optim import make_optimizer
from ccnet_jax.training.state import create_train_state, merge_model
from ccnet_jax.training.trainer import ModelEvaluation


def _from_checkpoint(config: ml_collections.ConfigDict, workdir: str):
  """The model of the newest training checkpoint in ``workdir``."""
  checkpoints = RunCheckpoints(os.path.join(workdir, "checkpoints"), keep=1 << 30)
  try:
    if checkpoints.latest_step() is None:
      raise FileNotFoundError(
          f"No checkpoint in {workdir}/checkpoints: train first (python train.py --config ..."
          f" --workdir {workdir}) or pass --model=<model directory>."
      )
    model = build_model(config.model, seed=config.train.seed)
    tx, _ = make_optimizer(config.optim, config.train.total_steps)
    graphdef, state = create_train_state(model, tx, seed=config.train.seed)
    state, _, step = checkpoints.restore(state)
  finally:
    checkpoints.close()
  return merge_model(graphdef, state, train=False), f"checkpoint of step {step}", None


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
