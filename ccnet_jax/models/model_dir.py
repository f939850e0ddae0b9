"""The project's model file format: an orbax checkpoint of the arrays plus a JSON description.

A model directory holds

* ``params/``: an ``ocp.StandardCheckpointer`` checkpoint of the parameters and
  BatchNorm statistics, as the pure dict of ``nnx.state(model, (Param, BatchStat))``;
* ``model.json``: the model ConfigDict, the input :class:`Preprocessing` the weights
  expect (channel order, mean, std on the 0-255 scale) and what the arrays cover
  ('all', or 'backbone' for an ImageNet initialisation).

Everything a later run needs to rebuild the network and feed it correctly is in
the directory, so evaluation of an imported PyTorch model and of a model trained
here is the same command. ``ccnet_jax.loading.load_model`` is how a program loads one.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from ccnet_jax import atomic
from ccnet_jax.errors import UserError
from ccnet_jax.models import schema
from ccnet_jax.models.ccnet import CCNet
from ccnet_jax.models.preprocessing import IMAGENET, Preprocessing
from ccnet_jax.models.registry import base_model_config
from ccnet_jax.models.resnet import ResNet

FORMAT = "ccnet_jax.model/1"
PARTS = ("all", "backbone")
INFO_FILE = "model.json"

_STATE_FILTER = (nnx.Param, nnx.BatchStat)


@dataclasses.dataclass(frozen=True)
class ModelInfo:
  """What ``model.json`` records: the architecture, the input it expects, which arrays."""

  config: ml_collections.ConfigDict  # The model config (``config.model`` of a run).
  preprocessing: Preprocessing
  part: str  # 'all', or 'backbone' for an ImageNet initialisation.


def is_model_dir(directory: str | os.PathLike) -> bool:
  return os.path.isfile(os.path.join(os.fspath(directory), INFO_FILE))


def flatten(tree: Mapping[Any, Any], prefix: str = "") -> dict[str, Any]:
  """Nested dict -> {'a/b/0/kernel': leaf}; integer keys (nnx.List) become strings."""
  flat = {}
  for key, value in tree.items():
    name = f"{prefix}{key}"
    if isinstance(value, Mapping):
      flat.update(flatten(value, name + "/"))
    else:
      flat[name] = value
  return flat


def unflatten_like(tree: Mapping[Any, Any], flat: Mapping[str, Any], prefix: str = "") -> dict:
  """The nested dict with ``tree``'s keys (and key types) and ``flat``'s leaves."""
  result = {}
  for key, value in tree.items():
    name = f"{prefix}{key}"
    if isinstance(value, Mapping):
      result[key] = unflatten_like(value, flat, name + "/")
    else:
      result[key] = flat[name]
  return result


def model_arrays(module: nnx.Module) -> dict[str, Any]:
  """The parameters and BatchNorm statistics of a module as a pure (nested) dict."""
  return nnx.state(module, _STATE_FILTER).to_pure_dict()


def empty_module(build: Callable[[], nnx.Module], *, seed: int = 0) -> nnx.Module:
  """The module ``build()`` returns, without running its initialisers.

  Parameters and BatchNorm statistics are shape placeholders for
  ``assign_arrays`` to fill; random streams (dropout keys) start from ``seed``.
  Running a network's initialisers op by op costs far more than loading it.
  """
  module = nnx.eval_shape(build)
  streams = nnx.state(module, nnx.RngState)
  leaves, treedef = jax.tree.flatten(streams.to_pure_dict())
  values = []
  for index, leaf in enumerate(leaves):
    if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
      values.append(jax.random.fold_in(jax.random.key(seed), index))
    else:
      values.append(jnp.zeros(leaf.shape, leaf.dtype))
  streams.replace_by_pure_dict(jax.tree.unflatten(treedef, values))
  nnx.update(module, streams)
  return module


def _to_json(value):
  if isinstance(value, Mapping):
    return {k: _to_json(v) for k, v in value.items()}
  if isinstance(value, (tuple, list)):
    return [_to_json(v) for v in value]
  return value


def _from_json(value):
  if isinstance(value, Mapping):
    return {k: _from_json(v) for k, v in value.items()}
  if isinstance(value, list):
    return tuple(_from_json(v) for v in value)
  return value


def _update_config(config: ml_collections.ConfigDict, values: Mapping[str, Any]) -> None:
  for key, value in values.items():
    if (
        isinstance(value, Mapping)
        and key in config
        and isinstance(config[key], ml_collections.ConfigDict)
    ):
      _update_config(config[key], value)
    else:
      config[key] = value


def config_from_json(values: Mapping[str, Any]) -> ml_collections.ConfigDict:
  """A model ConfigDict from its JSON form (``model.json``, a run's ``config.json``)."""
  config = base_model_config()
  _update_config(config, _from_json(values))
  return config


def _checkpointer() -> ocp.StandardCheckpointer:
  """An orbax checkpointer of this process alone: one process writes a model directory."""
  this = jax.process_index()
  options = ocp.options.MultiprocessingOptions(primary_host=this, active_processes={this})
  return ocp.StandardCheckpointer(multiprocessing_options=options)


def save_model(
    directory: str | os.PathLike,
    model: CCNet | ResNet,
    model_config: ml_collections.ConfigDict,
    *,
    preprocessing: Preprocessing | None,
) -> str:
  """Writes ``directory/params`` and ``directory/model.json`` atomically; returns the path.

  A ResNet (an imported ImageNet backbone) is written as a backbone-only model:
  its arrays sit under 'backbone/' as in a CCNet, ``model.json`` says
  ``"part": "backbone"``, and ``load_state_into(..., part='backbone')`` reads it.
  ``preprocessing=None`` records ImageNet RGB mean/std. An existing directory is
  replaced only once the new one is complete.
  """
  directory = os.path.abspath(os.fspath(directory))
  preprocessing = preprocessing or IMAGENET
  if isinstance(model, CCNet):
    part, arrays = "all", model_arrays(model)
  elif isinstance(model, ResNet):
    part, arrays = "backbone", {"backbone": model_arrays(model)}
  else:
    raise ValueError(f"save_model takes a CCNet or a ResNet, not {type(model).__name__}.")
  arrays = jax.tree.map(np.asarray, arrays)
  description = {
      "format": FORMAT,
      "part": part,
      "model": _to_json(model_config.to_dict()),
      "preprocessing": preprocessing.to_json(),
  }

  with atomic.replacing_directory(directory, overwrite=True) as staging:
    with _checkpointer() as checkpointer:
      checkpointer.save(os.path.join(staging, "params"), arrays)
    with open(os.path.join(staging, INFO_FILE), "w") as f:
      json.dump(description, f, indent=2)
  return directory


def check_links(directory: str | os.PathLike) -> None:
  """Refuses a model directory with a symbolic link that leads outside it (or nowhere): its
  files are read as the model's, so each must be the directory's own."""
  root = os.path.realpath(directory)
  for folder, names, files in os.walk(root):
    for name in names + files:
      path = os.path.join(folder, name)
      if not os.path.islink(path):
        continue
      target = os.path.realpath(path)
      if os.path.commonpath([root, target]) != root or not os.path.exists(target):
        raise UserError(
            f"{path} is a symbolic link to {target}, outside the model directory {root} (or"
            " missing); a model directory must hold its own files: copy the file in instead."
        )


def read_info(directory: str | os.PathLike) -> ModelInfo:
  """``model.json`` of a model directory, checked against its schema (``models.schema``)."""
  directory = os.fspath(directory)
  path = os.path.join(directory, INFO_FILE)
  if not os.path.isfile(path):
    raise FileNotFoundError(
        f"{path} not found: {directory!r} is not a model directory written by save_model"
        " (or by `python -m ccnet_jax.convert`)."
    )
  check_links(directory)
  description = schema.read_json(path, "model description (model.json)")
  schema.check(description, schema.model_file(FORMAT, PARTS), path)
  return ModelInfo(
      config=config_from_json(description["model"]),
      preprocessing=Preprocessing.from_json(description["preprocessing"]),
      part=description["part"],
  )


def read_arrays(directory: str | os.PathLike) -> dict[str, np.ndarray]:
  """The saved arrays, flat: {'backbone/layer1/0/conv1/kernel': array, ...}."""
  path = os.path.join(os.path.abspath(os.fspath(directory)), "params")
  if not os.path.isdir(path):
    raise FileNotFoundError(f"{path} not found: the model directory has no params checkpoint.")
  check_links(directory)
  try:
    with _checkpointer() as checkpointer:
      restored = checkpointer.restore(path, _restore_target(checkpointer.metadata(path)))
  except Exception as error:  # A damaged checkpoint fails in many libraries' types.
    # The libraries' messages can quote the bytes they read: only the error's type is named.
    raise UserError(
        f"{path} cannot be read ({type(error).__name__}: its files are damaged or incomplete);"
        " write the model directory again (train, or python -m ccnet_jax.convert)."
    ) from error
  return {name: np.asarray(value) for name, value in flatten(restored).items()}


def _restore_target(metadata) -> Any:
  """Abstract arrays, on this host's first device, for every array the checkpoint holds: with a
  sharding named, orbax restores without reading (and warning about) the saved one."""
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  tree = getattr(metadata, "item_metadata", metadata)
  tree = getattr(tree, "tree", tree)
  return jax.tree.map(
      lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=device), tree
  )


def assign_arrays(
    module: nnx.Module, flat: Mapping[str, np.ndarray], *, prefix: str = "", source: str
) -> None:
  """Sets every parameter / BatchNorm statistic of ``module`` from ``flat`` (names checked).

  ``prefix`` selects a subtree of ``flat`` ('backbone/' fills a ResNet from a
  CCNet's arrays). Missing or unexpected names and shape mismatches raise one
  ValueError that lists them.
  """
  state = nnx.state(module, _STATE_FILTER)
  target = state.to_pure_dict()
  expected = flatten(target)
  given = {k[len(prefix) :]: v for k, v in flat.items() if k.startswith(prefix)}
  missing = sorted(prefix + n for n in set(expected) - set(given))
  unexpected = sorted(prefix + n for n in set(given) - set(expected))
  mismatched = [
      f"{prefix}{name}: {tuple(given[name].shape)} vs model {tuple(expected[name].shape)}"
      for name in sorted(set(given) & set(expected))
      if tuple(given[name].shape) != tuple(expected[name].shape)
  ]
  if missing or unexpected or mismatched:
    raise ValueError(
        f"{source} does not fit the model: missing {missing[:20]}"
        f"{' ...' if len(missing) > 20 else ''} ({len(missing)}), unexpected"
        f" {unexpected[:20]}{' ...' if len(unexpected) > 20 else ''} ({len(unexpected)}),"
        f" shape mismatches {mismatched[:20]} ({len(mismatched)}). Build the model from the"
        " same config (model.json) as the arrays."
    )
  values = {name: jnp.asarray(given[name], dtype=expected[name].dtype) for name in expected}
  state.replace_by_pure_dict(unflatten_like(target, values))
  nnx.update(module, state)


def load_state_into(model: CCNet, directory: str | os.PathLike, *, part: str = "all") -> ModelInfo:
  """Fills an existing model from a model directory; returns the directory's info.

  ``part='all'`` replaces every array (the directory must hold a full model of
  the same shapes); ``part='backbone'`` replaces only the backbone, from either a
  full model or a backbone-only export, leaving the heads as they are.
  """
  if part not in PARTS:
    raise ValueError(f"part={part!r} is not one of {PARTS}.")
  info = read_info(directory)
  if part == "all" and info.part != "all":
    raise ValueError(
        f"{os.fspath(directory)!r} holds only a backbone; load it with part='backbone'."
    )
  flat = read_arrays(directory)
  source = f"model directory {os.fspath(directory)!r}"
  if part == "backbone":
    assign_arrays(model.backbone, flat, prefix="backbone/", source=source)
  else:
    assign_arrays(model, flat, source=source)
  return info
