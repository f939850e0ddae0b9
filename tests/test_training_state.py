"""TrainState: only arrays, an orbax round trip, merge_model, per-step dropout keys."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from flax import nnx

from ccnet_jax.training.state import TrainState, create_train_state, merge_model
from tests import numerics


class _Toy(nnx.Module):
  """Lists (integer keys), BatchNorm and two dropouts: the structures CCNet has."""

  def __init__(self, rngs):
    self.layers = nnx.List([nnx.Linear(3, 8, rngs=rngs), nnx.Linear(8, 8, rngs=rngs)])
    self.norm = nnx.BatchNorm(8, rngs=rngs)
    self.drop_a = nnx.Dropout(0.5, rngs=rngs)
    self.drop_b = nnx.Dropout(0.5, rngs=rngs)

  def __call__(self, x):
    x = self.norm(self.layers[1](self.layers[0](x)))
    return self.drop_a(x), self.drop_b(x)


def _create(seed=3):
  model = _Toy(nnx.Rngs(0))
  tx = optax.sgd(0.1, momentum=0.9)
  return model, tx, *create_train_state(model, tx, seed=seed)


def test_state_holds_only_arrays_taken_from_the_model():
  model, _, _, state = _create()
  assert all(isinstance(x, jax.Array) for x in jax.tree.leaves(state))
  chex.assert_trees_all_equal(state.params, nnx.to_pure_dict(nnx.state(model, nnx.Param)))
  chex.assert_trees_all_equal(state.batch_stats, nnx.to_pure_dict(nnx.state(model, nnx.BatchStat)))
  assert int(state.step) == 0
  np.testing.assert_array_equal(state.rng, jax.random.key_data(jax.random.key(3)))


def test_orbax_round_trip_restores_the_same_state(tmp_path):
  _, _, model_def, state = _create()
  state = state.replace(step=jnp.asarray(7, jnp.int32))
  with ocp.StandardCheckpointer() as checkpointer:
    checkpointer.save(tmp_path / "state", state)
  with ocp.StandardCheckpointer() as checkpointer:
    target = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
    restored = checkpointer.restore(tmp_path / "state", target)
  assert type(restored) is TrainState
  chex.assert_trees_all_equal(restored, state)
  model = merge_model(model_def, restored, train=False)
  chex.assert_trees_all_equal(nnx.to_pure_dict(nnx.state(model, nnx.Param)), state.params)


@pytest.mark.numeric
def test_merge_model_sets_train_or_eval_mode():
  _, _, model_def, state = _create()
  x = jnp.asarray(np.random.default_rng(0).normal(size=(4, 3)), jnp.float32)
  eval_model = merge_model(model_def, state, train=False)
  a, b = eval_model(x)
  chex.assert_trees_all_equal(a, b)  # no dropout in eval mode
  # Running statistics at init are mean 0, var 1: eval normalisation is x / sqrt(1 + eps).
  hidden = eval_model.layers[1](eval_model.layers[0](x))
  # Elementwise, no cancellation (mean 0, bias 0): a few roundings on either side (rsqrt
  # within 2 ulps under fast math), 16 of float32's unit roundoff at most.
  np.testing.assert_allclose(
      a, hidden / np.sqrt(1 + 1e-5), rtol=16 * numerics.UNIT_ROUNDOFF, atol=0
  )
  assert merge_model(model_def, state, train=True).norm.use_running_average is False


def test_dropout_keys_follow_rng_and_step():
  _, _, model_def, state = _create()
  x = jnp.ones((64, 3))

  def masks(state):
    model = model_def.merge(state.params, state.batch_stats, dropout_key=state.dropout_key())
    model.train()
    return [np.asarray(y) == 0 for y in model(x)]

  first = masks(state)
  np.testing.assert_array_equal(masks(state), first)  # same (rng, step): same masks
  assert not np.array_equal(first[0], first[1])  # the two dropouts draw independently
  later = masks(state.replace(step=state.step + 1))
  assert not np.array_equal(later[0], first[0])
