"""The train step: one pure function, jitted over the mesh with explicit shardings.

The state is replicated and the batch is sharded over 'data'. Because the model
sees the global batch inside ``jit``, BatchNorm means and variances are over all
devices of all processes (sync BN) and gradients are global means, with no
collective written by hand.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx
from jax.sharding import Mesh

from ccnet_jax.training.losses import segmentation_loss
from ccnet_jax.training.mesh import batch_sharding, replicated
from ccnet_jax.training.state import ModelDef, TrainState

Batch = dict[str, jax.Array]
TrainStep = Callable[[TrainState, Batch], tuple[TrainState, dict[str, jax.Array]]]


def make_train_step(
    model_def: ModelDef,
    tx: optax.GradientTransformation,
    schedule: optax.Schedule,
    loss_config: ml_collections.ConfigDict,
    mesh: Mesh,
) -> TrainStep:
  """Returns the jitted ``train_step(state, batch) -> (state, metrics)``.

  ``batch`` holds 'image' (B, H, W, 3) float and 'label' (B, H, W) int, sharded
  over 'data' (see ``mesh.global_batch``). The input state is donated: do not
  use it after the call. Metrics are replicated float32 scalars: loss, main,
  aux, lr (the rate this step used), grad_norm (before clipping) and finite
  (1.0 when loss and gradients are finite; the trainer stops otherwise).
  """

  def loss_fn(params, batch_stats, images, labels, dropout_key):
    model = model_def.merge(params, batch_stats, dropout_key=dropout_key)
    model.train()
    logits, aux_logits = model(images)
    loss, metrics = segmentation_loss(logits, aux_logits, labels, loss_config)
    new_batch_stats = nnx.to_pure_dict(nnx.state(model, nnx.BatchStat))
    return loss, (metrics, new_batch_stats)

  def train_step(state: TrainState, batch: Batch):
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    # Under the mesh, kernels XLA cannot partition (Pallas) run per device in a shard_map.
    with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
      (loss, (metrics, batch_stats)), grads = grad_fn(
          state.params, state.batch_stats, batch["image"], batch["label"], state.dropout_key()
      )
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    grad_norm = optax.global_norm(grads)
    metrics = dict(
        metrics,
        lr=jnp.asarray(schedule(state.step), jnp.float32),
        grad_norm=grad_norm,
        finite=(jnp.isfinite(loss) & jnp.isfinite(grad_norm)).astype(jnp.float32),
    )
    new_state = state.replace(
        step=state.step + 1, params=params, batch_stats=batch_stats, opt_state=opt_state
    )
    return new_state, metrics

  return jax.jit(
      train_step,
      in_shardings=(replicated(mesh), batch_sharding(mesh)),
      out_shardings=(replicated(mesh), replicated(mesh)),
      donate_argnums=0,
  )
