"""Rematerialisation changes what a training step stores, never what it computes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ccnet_jax.models import layers
from ccnet_jax.models import remat as remat_lib
from ccnet_jax.models.registry import build_model
from tests import numerics
from tests.helpers import tiny_model_config

# Recomputation repeats the same operations; only XLA's fusion and summation order differ.
# Against float64, the rematerialised step is allowed FACTOR x the plain float32 step's
# error (tests/numerics.py); measured up to 1.0x. A dropped BatchNorm update or a stale
# activation errs by a fraction of the values.
FACTOR = 4


def _tiny_config(remat: str, dtype: str = "float32"):
  config = tiny_model_config(remat=remat, dtype=dtype)
  config.head.dropout = config.aux.dropout = 0.0
  return config


def _loss_and_grads_fn(remat: str, dtype: str = "float32"):
  """A jitted (params, batch_stats, images) -> (loss, new batch stats, grads) of a tiny CCNet."""
  model = build_model(_tiny_config(remat, dtype), seed=0)
  model.train()
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)

  def loss_fn(params, rest, images):
    model = nnx.merge(graphdef, params, rest, copy=True)
    logits, aux = model(images)
    loss = jnp.mean(logits**2) + 0.4 * jnp.mean(aux**2)
    return loss, nnx.state(model, nnx.BatchStat)

  grad_fn = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))
  return grad_fn, params, rest


@pytest.mark.parametrize("remat", ["save_convs", "blocks"])
def test_remat_gives_the_same_loss_gradients_and_batch_stats(remat):
  images = jax.random.normal(jax.random.key(1), (2, 33, 33, 3))
  reference_fn, params, rest = _loss_and_grads_fn("none")
  remat_fn, _, _ = _loss_and_grads_fn(remat)
  with jax.enable_x64(True):
    truth_fn, _, _ = _loss_and_grads_fn("none", "float64")
    truth = truth_fn(*numerics.in_float64((params, rest, images)))
    truth = jax.tree.map(np.asarray, truth)
  numerics.assert_as_accurate_as(
      remat_fn(params, rest, images), reference_fn(params, rest, images), truth, factor=FACTOR
  )


def _outermost_checkpoints(jaxpr):
  """The checkpoint equations of ``jaxpr`` and its sub-jaxprs, not looking inside them."""
  for eqn in jaxpr.eqns:
    if eqn.primitive.name in ("checkpoint", "remat2"):  # The name differs across jax versions.
      yield eqn
      continue
    for value in eqn.params.values():
      for sub in value if isinstance(value, (tuple, list)) else (value,):
        if isinstance(sub, jax.extend.core.ClosedJaxpr):
          yield from _outermost_checkpoints(sub.jaxpr)
        elif isinstance(sub, jax.extend.core.Jaxpr):
          yield from _outermost_checkpoints(sub)


@pytest.mark.parametrize("remat", ["none", "save_convs", "blocks"])
def test_the_stem_and_every_block_run_under_checkpoint_with_the_policy(remat):
  """What 'remat' changes is the program's structure; its memory effect needs full-size maps
  (README: XLA plans 8.5 GB for the Cityscapes step with 'blocks' against 19.7 GB without, on
  a GPU); at CPU test sizes XLA's plan is the same within 5% for every policy."""
  model = build_model(_tiny_config(remat), seed=0)
  graphdef, state = nnx.split(model)

  def forward(state, images):
    return nnx.merge(graphdef, state)(images)

  images = jax.ShapeDtypeStruct((1, 33, 33, 3), jnp.float32)
  jaxpr = jax.make_jaxpr(forward)(state, images)
  checkpoints = list(_outermost_checkpoints(jaxpr.jaxpr))
  if remat == "none":
    assert not checkpoints
    return
  assert len(checkpoints) == 1 + 8  # The stem and ResNet-18's 2 + 2 + 2 + 2 blocks.
  assert all(e.params["policy"] is remat_lib.POLICIES[remat] for e in checkpoints)


def test_unknown_remat_is_named():
  with pytest.raises(ValueError, match="model.remat='all'"):
    build_model(_tiny_config("all"))


def test_conv_outputs_carry_the_name_the_policy_saves():
  conv = layers.conv2d(3, 4, 3, rngs=nnx.Rngs(0))
  jaxpr = jax.make_jaxpr(conv)(np.zeros((1, 5, 5, 3), np.float32))
  names = [e.params.get("name") for e in jaxpr.eqns if e.primitive.name == "name"]
  assert names == [remat_lib.CONV_OUTPUT]
