"""Named model variants as ConfigDicts, and the one function that builds a model from one."""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx
from ml_collections import config_dict

from ccnet_jax.models import init_schemes
from ccnet_jax.models.ccnet import CCNet

# float64 (parameters too) is for verification against float64 references; it needs
# jax_enable_x64 (JAX_ENABLE_X64=1).
DTYPES = {
    "float32": jnp.float32,
    "bfloat16": jnp.bfloat16,
    "float16": jnp.float16,
    "float64": jnp.float64,
}


def base_model_config() -> ml_collections.ConfigDict:
  """The official CCNet-ResNet-101 for Cityscapes (speedinghzl/CCNet ``networks/ccnet.py``)."""
  return ml_collections.ConfigDict(
      {
          "name": "ccnet_r101_official",
          "num_classes": 19,
          "dtype": "float32",
          "cca_impl": "einsum",
          # Memory of a training step: 'none', 'save_convs' or 'blocks' (see models/remat.py).
          "remat": "none",
          # The form of the dilated convolutions (see ops/dilated_conv.py): 'auto' (per
          # platform, when the program is lowered), 'lax', 'space_to_batch',
          # 'space_to_batch_wgrad'.
          "dilated_conv": "auto",
          # BatchNorm variance as E[x^2] - E[x]^2 (one pass) instead of E[(x - E[x])^2]:
          # False (two passes) is the accurate one; True exists to measure what it saves.
          "bn_fast_variance": False,
          # How the parameters start, as each recipe's reference code does it
          # (models/init_schemes.py): the official code keeps torch.nn's defaults.
          "init": {"backbone": "torch", "head": "torch"},
          "backbone": {
              "depth": 101,
              "stem": "deep",
              "output_stride": 8,
              "multi_grid": (1, 1, 1),
              "contract_dilation": False,
              "ceil_mode": config_dict.placeholder(bool),
              "base_width": 64,
          },
          "head": {
              "attention": "criss_cross",
              "recurrence": 2,
              "channels": config_dict.placeholder(int),
              "out_channels": 512,
              "activation": "leaky_relu",
              "dropout": 0.1,
          },
          "aux": {
              "enabled": True,
              "channels": 512,
              "use_bias": True,
              "activation": "leaky_relu",
              "dropout": 0.1,
          },
      }
  )


def _official(depth: int) -> Callable[[], ml_collections.ConfigDict]:
  def make():
    config = base_model_config()
    config.name = f"ccnet_r{depth}_official"
    config.backbone.depth = depth
    return config

  return make


def _mmseg(depth: int) -> Callable[[], ml_collections.ConfigDict]:
  """mmsegmentation's ``ccnet_r{depth}-d8``: ResNetV1c, ReLU heads, 256-channel aux."""

  def make():
    config = base_model_config()
    config.name = f"ccnet_r{depth}_d8_mmseg"
    config.backbone.update(depth=depth, stem="v1c", multi_grid=None, contract_dilation=True)
    config.head.activation = "relu"
    config.aux.update(channels=256, use_bias=False, activation="relu")
    config.init.update(backbone="mmseg", head="mmseg")
    return config

  return make


def _baseline(attention: str) -> Callable[[], ml_collections.ConfigDict]:
  """The paper's baselines on the official network: FCN (no attention) and non-local."""

  def make():
    config = base_model_config()
    config.name = {"none": "fcn_r101", "non_local": "nonlocal_r101"}[attention]
    config.head.attention = attention
    config.head.recurrence = 0 if attention == "none" else 1
    return config

  return make


def _tiny() -> ml_collections.ConfigDict:
  """The demo network: the official architecture shrunk to CPU size (ResNet-18 layout, deep
  stem of width 16, output stride 8, R=2, 64-channel heads), initialised for training from
  scratch."""
  config = base_model_config()
  config.name = "ccnet_r18_tiny"
  config.backbone.update(depth=18, base_width=16)
  config.head.out_channels = 64
  config.aux.channels = 64
  # From scratch, the backbone starts as torchvision's does, and the head with Kaiming
  # queries and keys: from torch's defaults (the official init) the attention did not learn
  # the demo's cue within its budget (README, "Initialisation").
  config.init.update(backbone="torchvision", head="kaiming")
  return config


MODELS: dict[str, Callable[[], ml_collections.ConfigDict]] = {
    "ccnet_r50_official": _official(50),
    "ccnet_r101_official": _official(101),
    "ccnet_r50_d8_mmseg": _mmseg(50),
    "ccnet_r101_d8_mmseg": _mmseg(101),
    "fcn_r101": _baseline("none"),
    "nonlocal_r101": _baseline("non_local"),
    "ccnet_r18_tiny": _tiny,
}


def model_config(name: str, **overrides) -> ml_collections.ConfigDict:
  """The ConfigDict of a named variant, with top-level fields overridden."""
  if name not in MODELS:
    raise ValueError(f"Unknown model {name!r}; known models: {sorted(MODELS)}.")
  config = MODELS[name]()
  config.update(overrides)
  return config


def construct_model(config: ml_collections.ConfigDict, *, seed: int | jax.Array = 0) -> CCNet:
  """The CCNet of a model ConfigDict, built op by op and initialised as ``model.init`` says.

  Slow to run, but free under ``nnx.eval_shape`` (``model_dir.empty_module``):
  the skeleton that loaded weights fill. ``build_model`` compiles it instead.
  ``seed`` is an int or a key (a traced one builds models of many seeds in one program).
  """
  _check_dtype(config)
  init_schemes.check_schemes(backbone=config.init.backbone, head=config.init.head)
  rngs = nnx.Rngs(seed)
  model = CCNet(
      config.num_classes,
      backbone=config.backbone.to_dict(),
      head=config.head.to_dict(),
      aux=config.aux.to_dict(),
      cca_impl=config.cca_impl,
      remat=config.get("remat", "none"),
      dilated_conv=config.get("dilated_conv", "auto"),
      dtype=DTYPES[config.dtype],
      rngs=rngs,
  )
  init_schemes.initialise(
      model, backbone=config.init.backbone, head=config.init.head, key=rngs.params()
  )
  if config.dtype == "float64":  # Parameters and statistics too.
    nnx.update(model, _cast_floats(nnx.state(model), jnp.float64))
  _set_fast_variance(model, config.get("bn_fast_variance", False))
  return model


def build_model(config: ml_collections.ConfigDict, *, seed: int = 0) -> CCNet:
  """Builds the CCNet described by a model ConfigDict (``config.model``).

  The initialisers run as one compiled program: run eagerly, each of the network's
  dozens of parameter shapes would compile its own small program, which on a CPU
  takes far longer than the whole jitted initialisation.
  """
  _check_dtype(config)
  make = lambda: construct_model(config, seed=seed)
  graphdef, _ = nnx.split(nnx.eval_shape(make))
  initialise = jax.jit(lambda: nnx.split(make())[1]).lower()
  # Random initialisers gain nothing from XLA's backend optimisations; skip them.
  state = initialise.compile({"xla_backend_optimization_level": 0})()
  return nnx.merge(graphdef, state)


def _check_dtype(config: ml_collections.ConfigDict) -> None:
  if config.dtype not in DTYPES:
    raise ValueError(f"model.dtype={config.dtype!r} is not one of {sorted(DTYPES)}.")
  if config.dtype == "float64" and not jax.config.jax_enable_x64:
    raise ValueError("model.dtype='float64' needs 64-bit JAX: set JAX_ENABLE_X64=1.")


def _cast_floats(state: nnx.State, dtype) -> nnx.State:
  """Floating-point arrays of ``state`` in ``dtype``; keys and counters untouched."""
  return jax.tree.map(
      lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, state
  )


def _set_fast_variance(model: nnx.Module, fast: bool) -> None:
  for _, module in nnx.iter_graph(model):
    if isinstance(module, nnx.BatchNorm):
      module.use_fast_variance = bool(fast)
