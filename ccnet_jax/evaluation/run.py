"""``eval.py``'s job: find the model a user names, evaluate it, write the results.

Also :class:`ModelEvaluation`, the dataset evaluation the training loop runs between
steps. Models are read by :func:`ccnet_jax.loading.load_model` (a checkpoint by its weights
alone, no optimiser); nothing here depends on the training loop.
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import ml_collections
from flax import nnx

from ccnet_jax import atomic
from ccnet_jax.data.labels import dataset_info
from ccnet_jax.data.pipeline import make_eval_loader
from ccnet_jax.errors import UserError
from ccnet_jax.evaluation.evaluator import (
    EvaluationResult,
    Evaluator,
    local_batch_size,
    model_predict_fn,
)
from ccnet_jax.evaluation.inference import InferenceSettings
from ccnet_jax.evaluation.metrics import format_results_table
from ccnet_jax.loading import load_model
from ccnet_jax.models.preprocessing import Preprocessing
from ccnet_jax.training.mesh import make_mesh, replicate
from ccnet_jax.training.workdir import (
    BEST_MODEL_DIR,
    CHECKPOINTS_DIR,
    FINAL_MODEL_DIR,
    config_differences,
    saved_config,
)

# eval.py's --model names for the models of a run, and where each lives in its workdir.
RUN_MODELS = {"latest": CHECKPOINTS_DIR, "best": BEST_MODEL_DIR, "final": FINAL_MODEL_DIR}


class ModelEvaluation:
  """Evaluates models of one architecture on the configured split, compiling once.

  The settings (``config.eval``) are checked when it is made; the evaluation step is
  compiled for the first model evaluated and reused for the next ones.
  """

  def __init__(
      self,
      config: ml_collections.ConfigDict,
      mesh,
      *,
      preprocessing: Preprocessing | None = None,
  ):
    """``preprocessing``: how the images are normalised for the models (default: the run's,
    ``config.data``)."""
    self.config = config
    self.info = dataset_info(config.data.name)
    self.mesh = mesh
    self.preprocessing = preprocessing or Preprocessing.from_config(config.data)
    self.settings = InferenceSettings.from_config(config.eval)
    local_batch_size(config.eval.batch_size, mesh)  # Checked now, used at the first call.
    self._evaluator: Evaluator | None = None

  def __call__(self, model: nnx.Module, *, out_dir: str | None) -> EvaluationResult:
    """mIoU, per-class IoU, accuracies of ``model`` (eval mode); PNGs to ``out_dir``."""
    predict_fn, state = model_predict_fn(model)
    if self._evaluator is None:
      self._evaluator = Evaluator(
          predict_fn,
          settings=self.settings,
          batch_size=self.config.eval.batch_size,
          num_classes=self.info.num_classes,
          mesh=self.mesh,
          ignore_label=self.info.ignore_label,
      )
    # Every array on every device of the mesh: a loaded model sits on one device only.
    state = replicate(state, self.mesh)
    batches = make_eval_loader(
        self.config.data,
        batch_size=self._evaluator.local_batch_size,
        preprocessing=self.preprocessing,
    )
    return self._evaluator.evaluate(
        state,
        batches,
        out_dir=out_dir,
        num_images_to_save=self.config.eval.num_images_to_save,
        palette=self.info.palette,
        preprocessing=self.preprocessing,
    )


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


def _check_checkpoints(config: ml_collections.ConfigDict, workdir: str) -> None:
  """The run in ``workdir`` has checkpoints of the model ``config`` describes."""
  if not os.path.isdir(workdir):
    raise FileNotFoundError(
        f"--workdir={workdir} does not exist: name the workdir of a training run, or pass"
        " --model=<model directory>."
    )
  directory = os.path.join(workdir, CHECKPOINTS_DIR)
  if not os.path.isdir(directory) or not any(name.isdigit() for name in os.listdir(directory)):
    raise FileNotFoundError(
        f"No checkpoint in {directory}: train first (python train.py --config ..."
        f" --workdir {workdir}) or pass --model=<model directory>."
    )
  _check_run_model(config, workdir)


def evaluate_from_workdir(
    config: ml_collections.ConfigDict, workdir: str, which: str = "latest"
) -> dict[str, Any]:
  """Evaluates the model ``which`` names: 'latest' (the newest checkpoint of the run in
  ``workdir``), 'best', 'final', or the path of a model directory or another run; prints the
  table, writes metrics.json and PNGs to WORKDIR/eval.

  The model computes with the config's ``model.dtype`` and ``model.cca_impl``, and is fed
  with the input normalisation it records (a converted model brings its own).
  """
  workdir = os.path.abspath(workdir)
  if which == "latest":
    _check_checkpoints(config, workdir)
  path = os.path.join(workdir, RUN_MODELS[which]) if which in RUN_MODELS else which
  if not os.path.isdir(path):
    raise FileNotFoundError(
        f"--model={which}: {path} is not a model directory (one written by training as"
        " WORKDIR/best or WORKDIR/model, or by python -m ccnet_jax.convert)."
    )
  loaded = load_model(path, dtype=config.model.dtype, cca_impl=config.model.cca_impl)
  if loaded.num_classes != config.model.num_classes:
    raise ValueError(
        f"--model={which}: {path} predicts {loaded.num_classes} classes but"
        f" {config.data.name} has {config.model.num_classes}; evaluate it with a matching config."
    )
  out_dir = os.path.join(workdir, "eval")
  evaluation = ModelEvaluation(config, make_mesh(), preprocessing=loaded.preprocessing)
  metrics = evaluation(loaded.model, out_dir=out_dir).metrics
  if jax.process_index() == 0:
    print(f"Evaluated the {loaded.source} on {config.data.name}/{config.data.eval_split}:")
    print(format_results_table(metrics, dataset_info(config.data.name).class_names))
    with atomic.writing(os.path.join(out_dir, "metrics.json")) as temporary:
      with open(temporary, "w", encoding="utf-8") as f:
        json.dump(metrics, f, indent=1, default=float)
  return metrics
