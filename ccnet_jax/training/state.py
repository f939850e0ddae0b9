"""The train state as a pytree of plain arrays, and the static half of the model.

NNX modules are split into a static graph definition (kept in :class:`ModelDef`)
and array state. ``TrainState`` holds only arrays in pure dicts, so it crosses
``jit`` boundaries, shards, and round-trips through orbax unchanged.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx, struct


class TrainState(struct.PyTreeNode):
  """Everything that changes during training.

  Attributes:
    step: int32 scalar, the number of updates applied.
    params: pure dict of the ``nnx.Param`` values (float32).
    batch_stats: pure dict of the ``nnx.BatchStat`` values (BN running stats).
    opt_state: the optax state.
    rng: uint32 key data (``jax.random.key_data``); dropout keys derive from it
      and ``step``, so a resumed run draws the same masks as an uninterrupted one.
  """

  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  rng: jax.Array

  def dropout_key(self) -> jax.Array:
    """The typed key of this step's dropout masks."""
    return jax.random.fold_in(jax.random.wrap_key_data(self.rng), self.step)


@dataclasses.dataclass(frozen=True, eq=False)
class ModelDef:
  """The static part of a model: graph definition, state layouts, RNG streams.

  ``params`` and ``batch_stats`` are abstract ``nnx.State`` templates (shapes
  only) that pure dicts are poured into; ``rest`` holds the remaining state
  (dropout RNG streams), reseeded every step.
  """

  graphdef: nnx.GraphDef
  params: nnx.State
  batch_stats: nnx.State
  rest: nnx.State
  rng_streams: tuple[str, ...]

  def merge(self, params, batch_stats, *, dropout_key: jax.Array | None = None) -> nnx.Module:
    """A fresh module from pure dicts (safe inside ``jit`` and ``grad``)."""
    model = nnx.merge(
        self.graphdef,
        _fill(self.params, params),
        _fill(self.batch_stats, batch_stats),
        self.rest,
        copy=True,
    )
    if dropout_key is not None and self.rng_streams:
      # One Rngs per stream name: every Dropout gets its own key derived from this one.
      nnx.reseed(model, **{name: dropout_key for name in self.rng_streams})
    return model


def _fill(template: nnx.State, pure_dict) -> nnx.State:
  """A new State shaped like ``template`` holding the arrays of ``pure_dict``."""
  state = jax.tree.map(lambda x: x, template)
  nnx.replace_by_pure_dict(state, pure_dict)
  return state


def create_train_state(
    model: nnx.Module, tx: optax.GradientTransformation, *, seed: int
) -> tuple[ModelDef, TrainState]:
  """Splits ``model`` into its static ``ModelDef`` and a step-0 ``TrainState``."""
  graphdef, params, batch_stats, rest = nnx.split(model, nnx.Param, nnx.BatchStat, ...)
  rng_streams = sorted(
      {variable.tag for _, variable in nnx.to_flat_state(rest) if isinstance(variable, nnx.RngKey)}
  )
  model_def = ModelDef(
      graphdef=graphdef,
      params=jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params),
      batch_stats=jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), batch_stats),
      rest=rest,
      rng_streams=tuple(rng_streams),
  )
  pure_params = nnx.to_pure_dict(params)
  state = TrainState(
      step=jnp.zeros((), jnp.int32),
      params=pure_params,
      batch_stats=nnx.to_pure_dict(batch_stats),
      opt_state=tx.init(pure_params),
      rng=jax.random.key_data(jax.random.key(seed)),
  )
  return model_def, state


def merge_model(model_def: ModelDef, state: TrainState, *, train: bool) -> nnx.Module:
  """The model with ``state``'s weights, in train mode or eval mode (running BN stats)."""
  model = model_def.merge(state.params, state.batch_stats)
  if train:
    model.train()
  else:
    model.eval()
  return model
