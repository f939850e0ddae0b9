"""The one way a program gets a trained model: :func:`load_model`, from wherever it was saved.

A path names one of

* a model directory (``model.json`` + ``params/``): written by a run (``WORKDIR/model``,
  ``WORKDIR/best``) or by ``python -m ccnet_jax.convert`` from a released checkpoint;
* a run's checkpoint directory (``WORKDIR/checkpoints``): the newest checkpoint's weights,
  rebuilt with the model and the input normalisation of the run's ``config.json``;
* a training workdir: its final model (``model/``), else its best (``best/``), else its
  newest checkpoint.

The network is built without running its initialisers (the loaded arrays replace them), in
eval mode; no optimiser is built and no optimiser state is read.
"""

from __future__ import annotations

import dataclasses
import os

import jax
import ml_collections
from flax import nnx

from ccnet_jax.errors import UserError
from ccnet_jax.models import model_dir, schema
from ccnet_jax.models.ccnet import CCNet
from ccnet_jax.models.preprocessing import Preprocessing
from ccnet_jax.models.registry import construct_model
from ccnet_jax.training.checkpointing import WEIGHTS, restore_weights
from ccnet_jax.training.workdir import (
    BEST_MODEL_DIR,
    CHECKPOINTS_DIR,
    CONFIG_FILE,
    FINAL_MODEL_DIR,
    saved_config,
)


@dataclasses.dataclass(frozen=True)
class LoadedModel:
  """A network ready to predict, with what is needed to feed it and to say what it is."""

  model: CCNet  # In eval mode.
  config: ml_collections.ConfigDict  # Its model config, dtype and cca_impl as loaded.
  preprocessing: Preprocessing  # What its input must be (see ``Preprocessing.normalize``).
  source: str  # What was read: 'model directory DIR' or 'checkpoint of step N in DIR'.

  @property
  def num_classes(self) -> int:
    return int(self.config.num_classes)


def load_model(
    path: str | os.PathLike, *, dtype: str | None = None, cca_impl: str | None = None
) -> LoadedModel:
  """The model saved at ``path`` (see the module docstring for what a path may name).

  ``dtype`` ('float32', 'bfloat16', ...) and ``cca_impl`` ('einsum', 'pallas', ...) replace
  the recorded computation dtype and attention implementation; the parameters are loaded as
  they were saved.
  """
  path = os.path.abspath(os.fspath(path))
  overrides = {"dtype": dtype, "cca_impl": cca_impl}
  if model_dir.is_model_dir(path):
    return _from_model_dir(path, overrides)
  if _has_checkpoints(path):
    return _from_checkpoints(path, overrides)
  for name in (FINAL_MODEL_DIR, BEST_MODEL_DIR):
    if model_dir.is_model_dir(os.path.join(path, name)):
      return _from_model_dir(os.path.join(path, name), overrides)
  if _has_checkpoints(os.path.join(path, CHECKPOINTS_DIR)):
    return _from_checkpoints(os.path.join(path, CHECKPOINTS_DIR), overrides)
  if not os.path.isdir(path):
    raise FileNotFoundError(f"{path}: no such directory.")
  raise FileNotFoundError(
      f"{path} is not a model directory (no {model_dir.INFO_FILE}), nor a training workdir with"
      f" {FINAL_MODEL_DIR}/, {BEST_MODEL_DIR}/ or {CHECKPOINTS_DIR}/; train first, or convert a"
      " released checkpoint with python -m ccnet_jax.convert."
  )


def _has_checkpoints(directory: str) -> bool:
  return os.path.isdir(directory) and any(name.isdigit() for name in os.listdir(directory))


def _empty_model(config: ml_collections.ConfigDict, overrides: dict) -> CCNet:
  config.update({name: value for name, value in overrides.items() if value is not None})
  return model_dir.empty_module(lambda: construct_model(config))


def _from_model_dir(directory: str, overrides: dict) -> LoadedModel:
  info = model_dir.read_info(directory)
  if info.part != "all":
    raise ValueError(
        f"{directory} holds only a backbone, not a whole model; use it as an initialisation"
        " (--config.train.init_from)."
    )
  model = _empty_model(info.config, overrides)
  model_dir.load_state_into(model, directory, part="all")
  model.eval()
  return LoadedModel(model, info.config, info.preprocessing, f"model directory {directory}")


def _weights_target(model: nnx.Module) -> dict:
  """Abstract params and batch_stats of ``model``: what a checkpoint's weights restore into."""
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  abstract = lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device)  # noqa: E731
  parts = dict(zip(WEIGHTS, nnx.split(model, nnx.Param, nnx.BatchStat, ...)[1:3]))
  return {name: jax.tree.map(abstract, nnx.to_pure_dict(state)) for name, state in parts.items()}


def _from_checkpoints(directory: str, overrides: dict) -> LoadedModel:
  workdir = os.path.dirname(directory)
  saved = saved_config(workdir)
  if saved is None:
    raise FileNotFoundError(
        f"{os.path.join(workdir, CONFIG_FILE)} not found: the checkpoints in {directory} cannot"
        " be rebuilt without the run's config; pass a model directory instead."
    )
  config_path = os.path.join(workdir, CONFIG_FILE)
  for section, fields, prefix in (
      ("model", schema.MODEL, "model."),
      (
          "data",
          {name: schema.PREPROCESSING[name] for name in ("channel_order", "mean", "std")},
          "data.",
      ),
  ):
    values = saved.get(section)
    if not isinstance(values, dict):
      raise UserError(
          f"{config_path}: the section {section} is missing; restore the run's config.json."
      )
    if section == "data":
      values = {name: values.get(name) for name in fields}
    schema.check(values, fields, config_path, prefix)
  config = model_dir.config_from_json(saved["model"])
  model = _empty_model(config, overrides)
  weights, step = restore_weights(directory, _weights_target(model))
  arrays = {
      name: array for part in WEIGHTS for name, array in model_dir.flatten(weights[part]).items()
  }
  model_dir.assign_arrays(model, arrays, source=f"the checkpoint of step {step} in {directory}")
  model.eval()
  preprocessing = Preprocessing.from_json(saved["data"])
  return LoadedModel(model, config, preprocessing, f"checkpoint of step {step} in {directory}")
