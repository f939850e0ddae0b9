"""Rematerialisation: what a training step keeps for the backward pass and what it recomputes.

A dilated ResNet at output stride 8 spends most of a training step's memory on the
activations its 3 x 3 and 1 x 1 convolutions leave for the backward pass. Each
residual block (and the stem) can run under ``jax.checkpoint`` with one of these
policies:

* ``'none'``: XLA keeps whatever it chooses (fastest, most memory).
* ``'save_convs'``: only convolution outputs (and block inputs) are kept;
  BatchNorm and activations are recomputed in the backward pass, which costs
  elementwise work, no convolutions.
* ``'blocks'``: only block inputs are kept; the whole block, convolutions
  included, runs again in the backward pass (about one more forward).
"""

from __future__ import annotations

from typing import Callable

import jax
from flax import nnx
from jax.ad_checkpoint import checkpoint_name

Array = jax.Array

CONV_OUTPUT = "conv_output"

POLICIES: dict[str, Callable[..., bool] | None] = {
    "none": None,
    "save_convs": jax.checkpoint_policies.save_only_these_names(CONV_OUTPUT),
    "blocks": jax.checkpoint_policies.nothing_saveable,
}


def tag_conv_output(x: Array) -> Array:
  """Names ``x`` as a convolution output for the 'save_convs' policy (a no-op otherwise)."""
  return checkpoint_name(x, CONV_OUTPUT)


def check_remat(remat: str) -> str:
  if remat not in POLICIES:
    raise ValueError(f"model.remat={remat!r} is not one of {sorted(POLICIES)}.")
  return remat


def call(module: nnx.Module, x: Array, remat: str) -> Array:
  """``module(x)``, rematerialised in the backward pass as ``remat`` says.

  The module runs as a pure function of its state under ``jax.checkpoint``; its
  updated state (BatchNorm running statistics in train mode) is written back.
  """
  if remat == "none":
    return module(x)
  graphdef, state = nnx.split(module)

  def pure(state, x):
    module = nnx.merge(graphdef, state)
    return module(x), nnx.state(module)

  y, state = jax.checkpoint(pure, policy=POLICIES[remat])(state, x)
  nnx.update(module, state)
  return y
