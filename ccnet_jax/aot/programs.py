"""A config's train step and evaluation step, lowered for a mesh of any devices.

Nothing is run and no weight is initialised: the state and the batch are shapes with
shardings (``jax.ShapeDtypeStruct``), so the programs can be compiled for devices
this machine does not have. They are the programs training builds: the model of
``config.model``, the optimiser of ``config.optim``, ``make_train_step`` with the
loss of ``config.loss``; the evaluator of ``config.eval``.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx
from jax.sharding import Mesh

from ccnet_jax.errors import UserError
from ccnet_jax.evaluation.evaluator import Evaluator, model_predict_fn
from ccnet_jax.evaluation.inference import InferenceSettings
from ccnet_jax.models.model_dir import empty_module
from ccnet_jax.models.preprocessing import Preprocessing
from ccnet_jax.models.registry import construct_model
from ccnet_jax.training.mesh import DATA_AXIS, batch_sharding, replicated
from ccnet_jax.training.optim import make_optimizer
from ccnet_jax.training.state import ModelDef, TrainState, create_train_state
from ccnet_jax.training.step import make_train_step

# The images evaluation sees, by dataset (Cityscapes: every image is 1024 x 2048);
# other datasets' images vary in size, and their evaluation crop stands for them.
EVAL_IMAGE_SIZES = {"cityscapes": (1024, 2048)}


def check_batch(config: ml_collections.ConfigDict, mesh: Mesh) -> None:
  """The global batch must split evenly over the devices, as training requires."""
  devices, batch = mesh.shape[DATA_AXIS], int(config.train.global_batch_size)
  if batch % devices:
    larger = -(-batch // devices) * devices
    raise UserError(
        f"--config.train.global_batch_size={batch} does not split over {devices} devices;"
        f" use a multiple of {devices} (e.g. {larger})."
    )


def _abstract_model(config: ml_collections.ConfigDict) -> nnx.Module:
  return empty_module(lambda: construct_model(config.model, seed=config.train.seed))


def _on_mesh(tree, sharding):
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)


def abstract_train_state(
    config: ml_collections.ConfigDict, mesh: Mesh
) -> tuple[ModelDef, TrainState]:
  """The model definition and the step-0 state as replicated shapes, nothing computed."""
  model = _abstract_model(config)
  tx, _ = make_optimizer(config.optim, config.train.total_steps)
  model_defs = []

  def state():
    model_def, train_state = create_train_state(model, tx, seed=config.train.seed)
    model_defs.append(model_def)
    return train_state

  abstract = jax.eval_shape(state)
  return model_defs[0], _on_mesh(abstract, replicated(mesh))


def lower_train_step(config: ml_collections.ConfigDict, mesh: Mesh) -> jax.stages.Lowered:
  """The train step of ``config`` for a global batch of training crops, lowered for ``mesh``."""
  check_batch(config, mesh)
  model_def, state = abstract_train_state(config, mesh)
  tx, schedule = make_optimizer(config.optim, config.train.total_steps)
  preprocessing = Preprocessing.from_config(config.data)
  step = make_train_step(model_def, tx, schedule, config.loss, mesh, preprocessing)
  batch_size = int(config.train.global_batch_size)
  shape = (batch_size, *config.data.crop_size)
  sharding = batch_sharding(mesh)
  # What the training loader yields (data.pipeline.TrainLoader); the step normalises the images.
  batch = {
      "image": jax.ShapeDtypeStruct(shape + (3,), jnp.uint8, sharding=sharding),
      "label": jax.ShapeDtypeStruct(shape, jnp.uint8, sharding=sharding),
      "image_box": jax.ShapeDtypeStruct((batch_size, 4), jnp.int32, sharding=sharding),
  }
  return step.lower(state, batch)


def eval_image_size(config: ml_collections.ConfigDict) -> tuple[int, int]:
  """The size of the images the evaluation step is compiled for."""
  return EVAL_IMAGE_SIZES.get(config.data.name, tuple(config.eval.crop_size))


def lower_eval_step(
    config: ml_collections.ConfigDict, mesh: Mesh, image_size: Sequence[int]
) -> tuple[jax.stages.Lowered, int]:
  """The evaluation step of ``config`` (its mode, windows, scales, flips) and its global batch.

  The batch is ``eval.batch_size`` rounded up to a multiple of the devices, as the
  evaluator requires.
  """
  predict_fn, state = model_predict_fn(_abstract_model(config))
  evaluator = Evaluator(
      predict_fn,
      settings=InferenceSettings.from_config(config.eval),
      batch_size=config.eval.batch_size,
      num_classes=config.model.num_classes,
      mesh=mesh,
  )
  return evaluator.lower_step(_on_mesh(state, replicated(mesh)), tuple(image_size))
