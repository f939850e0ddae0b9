"""What several test modules share: tiny models, saved model directories, running commands."""

from __future__ import annotations

import os

import jax
import ml_collections
import numpy as np
import pytest
from flax import nnx

from ccnet_jax import cli
from ccnet_jax.models import model_dir
from ccnet_jax.models.registry import construct_model, model_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_model_config(depth: int = 18, num_classes: int = 5) -> ml_collections.ConfigDict:
  """The official CCNet shrunk to a CPU test's size (ResNet-18 layout, width 8, 16 channels)."""
  config = model_config("ccnet_r101_official", num_classes=num_classes)
  config.backbone.update(depth=depth, base_width=8)
  config.head.update(channels=16, out_channels=16)
  config.aux.channels = 16
  return config


def randomised(config: ml_collections.ConfigDict, seed: int) -> nnx.Module:
  """A model in eval mode whose every array (gamma and BatchNorm statistics too) is random."""
  model = model_dir.empty_module(lambda: construct_model(config))
  state = nnx.state(model, (nnx.Param, nnx.BatchStat))
  leaves, treedef = jax.tree.flatten(state.to_pure_dict())
  rng = np.random.default_rng(seed)
  leaves = [
      (rng.uniform(0.5, 1.5, x.shape) if x.ndim == 1 else rng.normal(0, 0.2, x.shape)).astype(
          np.float32
      )
      for x in leaves
  ]
  state.replace_by_pure_dict(jax.tree.unflatten(treedef, leaves))
  nnx.update(model, state)
  model.eval()
  return model


def flat_arrays(module: nnx.Module) -> dict[str, np.ndarray]:
  """Every parameter and BatchNorm statistic of ``module`` by its path."""
  return {k: np.asarray(v) for k, v in model_dir.flatten(model_dir.model_arrays(module)).items()}


def run_command(main, *arguments) -> int:
  """Runs ``main`` through ``cli.run`` in this process, as its script would; its exit status."""
  with pytest.raises(SystemExit) as exit_info:
    cli.run(main, ["command", *map(str, arguments)])
  return exit_info.value.code or 0
