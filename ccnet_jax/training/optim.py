"""SGD with poly learning-rate decay and torch-style (coupled) L2 weight decay.

The official recipe (its values live in ``configs/common.py``): lr 0.01,
``lr * (1 - step / total_steps) ** 0.9``, momentum 0.9, weight decay on every
parameter, added to the gradient before the momentum as
``torch.optim.SGD(weight_decay=...)`` does. ``optim.name='adamw'``
swaps in AdamW (decoupled decay) under the same schedule: short runs from scratch,
such as the synthetic demo, learn far faster with it.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import optax

WEIGHT_DECAY_ON = ("all", "kernels")


def make_schedule(optim_config: ml_collections.ConfigDict, total_steps: int) -> optax.Schedule:
  """Poly decay, optionally preceded by mmseg-style linear warm-up.

  ``lr(t) = learning_rate * (1 - t / total_steps) ** power``; during the first
  ``warmup_steps`` steps it is scaled by ``1 - (1 - t / warmup_steps) * (1 -
  warmup_start_ratio)``, rising linearly from ``warmup_start_ratio`` to 1.
  Steps past ``total_steps`` get 0.
  """
  if total_steps <= 0:
    raise ValueError(f"total_steps={total_steps} must be positive (set the number of steps).")
  warmup_steps = optim_config.warmup_steps or 0
  if not 0 <= warmup_steps < total_steps:
    raise ValueError(
        f"optim.warmup_steps={warmup_steps} must be in [0, total_steps={total_steps})."
    )
  base, power = optim_config.learning_rate, optim_config.power
  ratio = optim_config.warmup_start_ratio

  def schedule(step):
    # float64 under jax_enable_x64, so a float64 verification run gets exact rates.
    t = jnp.minimum(jnp.asarray(step, jnp.result_type(float)), total_steps)
    lr = base * ((total_steps - t) / total_steps) ** power
    if warmup_steps:
      warmup = 1.0 - (1.0 - jnp.minimum(t / warmup_steps, 1.0)) * (1.0 - ratio)
      lr = lr * warmup
    return lr

  return schedule


def weight_decay_mask(weight_decay_on: str) -> Callable[[Any], Any]:
  """A function from params to a same-shaped tree of bools: which leaves decay.

  'all' decays every parameter (the official code, BN scales and biases too);
  'kernels' only convolution kernels (leaves named 'kernel').
  """
  if weight_decay_on not in WEIGHT_DECAY_ON:
    raise ValueError(
        f"optim.weight_decay_on={weight_decay_on!r} is not one of {list(WEIGHT_DECAY_ON)}."
    )

  def mask(params):
    if weight_decay_on == "all":
      return jax.tree.map(lambda _: True, params)
    return jax.tree_util.tree_map_with_path(
        lambda path, _: getattr(path[-1], "key", None) == "kernel", params
    )

  return mask


def make_optimizer(
    optim_config: ml_collections.ConfigDict, total_steps: int
) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """Returns ``(tx, schedule)``: [clip ->] coupled weight decay -> SGD momentum.

  Gradient clipping (``clip_grad_norm``, None = off) acts on the raw gradients,
  as ``torch.nn.utils.clip_grad_norm_`` before ``optimizer.step()``.
  """
  schedule = make_schedule(optim_config, total_steps)
  parts = []
  if optim_config.clip_grad_norm is not None:
    if optim_config.clip_grad_norm <= 0:
      raise ValueError(
          f"optim.clip_grad_norm={optim_config.clip_grad_norm} must be positive or None."
      )
    parts.append(optax.clip_by_global_norm(optim_config.clip_grad_norm))
  mask = weight_decay_mask(optim_config.weight_decay_on)
  name = optim_config.get("name", "sgd")
  if name == "sgd":
    if optim_config.weight_decay:
      parts.append(optax.add_decayed_weights(optim_config.weight_decay, mask=mask))
    parts.append(
        optax.sgd(schedule, momentum=optim_config.momentum or None, nesterov=optim_config.nesterov)
    )
  elif name == "adamw":
    parts.append(optax.adamw(schedule, weight_decay=optim_config.weight_decay, mask=mask))
  else:
    raise ValueError(f"optim.name={name!r} is not one of ('sgd', 'adamw').")
  return optax.chain(*parts), schedule
