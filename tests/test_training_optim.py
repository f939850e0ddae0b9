"""The poly schedule against its formula, and optimiser steps against torch.optim.SGD."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ccnet_jax.training import optim
from configs import common
from tests import numerics

torch = pytest.importorskip("torch")


def _config(**overrides):
  config = common.optim_config()
  config.update(overrides)
  return config


def test_poly_schedule_matches_the_formula():
  schedule = optim.make_schedule(_config(learning_rate=0.01, power=0.9), 1000)
  for step in [0, 1, 250, 999, 1000, 1200]:
    expected = 0.01 * (1 - min(step, 1000) / 1000) ** 0.9
    np.testing.assert_allclose(schedule(step), expected, rtol=1e-6, atol=1e-12)


def test_warmup_rises_linearly_from_the_start_ratio_then_follows_poly():
  config = _config(learning_rate=0.02, power=1.0, warmup_steps=10, warmup_start_ratio=0.1)
  schedule = optim.make_schedule(config, 100)
  for step in [0, 5, 9, 10, 50]:
    poly = 0.02 * (1 - step / 100)
    factor = 0.1 + 0.9 * step / 10 if step < 10 else 1.0
    np.testing.assert_allclose(schedule(step), poly * factor, rtol=1e-6)


@pytest.mark.parametrize(
    "overrides,total,match",
    [
        (dict(warmup_steps=100), 100, "warmup_steps"),
        (dict(weight_decay_on="bn"), 10, "weight_decay_on"),
        (dict(clip_grad_norm=0.0), 10, "clip_grad_norm"),
        ({}, 0, "total_steps"),
    ],
)
def test_bad_config_is_a_clear_error(overrides, total, match):
  with pytest.raises(ValueError, match=match):
    optim.make_optimizer(_config(**overrides), total)


def _toy_params(seed=0):
  rng = np.random.default_rng(seed)
  return {
      "conv": {"kernel": rng.normal(size=(3, 3, 2, 4)), "bias": rng.normal(size=(4,))},
      "bn": {"scale": rng.normal(size=(4,)), "bias": rng.normal(size=(4,))},
      "gamma": rng.normal(size=(1,)),
  }


def test_weight_decay_mask_selects_kernels_or_everything():
  params = _toy_params()
  kernels = optim.weight_decay_mask("kernels")(params)
  assert jax.tree.leaves(optim.weight_decay_mask("all")(params)) == [True] * 5
  assert kernels["conv"]["kernel"] is True
  assert not any(
      [kernels["conv"]["bias"], kernels["bn"]["scale"], kernels["bn"]["bias"], kernels["gamma"]]
  )


def _paths(tree):
  return [
      (jax.tree_util.keystr(path), np.asarray(leaf))
      for path, leaf in jax.tree_util.tree_leaves_with_path(tree)
  ]


@pytest.mark.numeric
@pytest.mark.parametrize(
    "overrides",
    [
        dict(),  # the official recipe
        dict(weight_decay_on="kernels", nesterov=True),
        dict(clip_grad_norm=0.5, warmup_steps=2),
    ],
)
def test_steps_match_torch_sgd(overrides):
  """Four steps against torch's SGD in float64, within 4x torch's float32 error.

  The updates are elementwise but for the clipping's global norm, a sum over every
  parameter that torch and optax order differently; measured up to 0.97x.
  """
  config = _config(learning_rate=0.1, weight_decay=0.05, **overrides)
  total = 6
  tx, schedule = optim.make_optimizer(config, total)
  params = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), _toy_params())
  opt_state = tx.init(params)
  names_and_values = _paths(params)
  rng = np.random.default_rng(1)
  grads = [
      [rng.normal(size=value.shape).astype(np.float32) for _, value in names_and_values]
      for _ in range(4)
  ]

  ours = []
  for step_grads in grads:
    tree = jax.tree.unflatten(jax.tree.structure(params), [jnp.asarray(g) for g in step_grads])
    updates, opt_state = tx.update(tree, opt_state, params)
    params = optax.apply_updates(params, updates)
    ours.append([value for _, value in _paths(params)])

  def torch_steps(dtype):
    """Torch: the same formula for the rate, the same clipping, then SGD's step."""
    torch_params = [
        torch.tensor(value, dtype=dtype, requires_grad=True) for _, value in names_and_values
    ]
    decayed = [
        config.weight_decay_on == "all" or name.endswith("['kernel']")
        for name, _ in names_and_values
    ]
    groups = [
        {"params": [p for p, d in zip(torch_params, decayed) if d], "weight_decay": 0.05},
        {"params": [p for p, d in zip(torch_params, decayed) if not d], "weight_decay": 0.0},
    ]
    sgd = torch.optim.SGD(
        [g for g in groups if g["params"]], lr=0.1, momentum=0.9, nesterov=config.nesterov
    )
    steps = []
    for step, step_grads in enumerate(grads):
      lr = 0.1 * (1 - step / total) ** 0.9
      if config.warmup_steps and step < config.warmup_steps:
        lr *= 1 - (1 - step / config.warmup_steps) * (1 - config.warmup_start_ratio)
      for group in sgd.param_groups:
        group["lr"] = lr
      for p, g in zip(torch_params, step_grads):
        p.grad = torch.from_numpy(g).to(dtype)
      if config.clip_grad_norm:
        torch.nn.utils.clip_grad_norm_(torch_params, config.clip_grad_norm)
      sgd.step()
      steps.append([p.detach().numpy().copy() for p in torch_params])
    return steps

  numerics.assert_as_accurate_as(
      ours, torch_steps(torch.float32), torch_steps(torch.float64), factor=4
  )
