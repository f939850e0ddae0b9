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

from ccnet_jax.models.preprocessing import Preprocessing
from ccnet_jax.training.losses import segmentation_loss
from ccnet_jax.training.mesh import batch_sharding, replicated
from ccnet_jax.training.state import ModelDef, TrainState

Batch = dict[str, jax.Array]
TrainStep = Callable[[TrainState, Batch], tuple[TrainState, dict[str, jax.Array]]]


def normalize_images(
    images: jax.Array, image_box: jax.Array, preprocessing: Preprocessing
) -> jax.Array:
  """uint8 RGB crops (B, H, W, 3) -> the model's float32 input, 0 outside each example's
  ``image_box`` (top, left, bottom, right): the padding, which the recipe adds after
  normalising, so that it is the mean colour."""
  x = preprocessing.normalize(jnp.asarray(images))
  rows = jnp.arange(x.shape[1])[None, :, None]
  cols = jnp.arange(x.shape[2])[None, None, :]
  top, left, bottom, right = (image_box[:, i, None, None] for i in range(4))
  inside = (rows >= top) & (rows < bottom) & (cols >= left) & (cols < right)
  return jnp.where(inside[..., None], x, 0.0)


def make_train_step(
    model_def: ModelDef,
    tx: optax.GradientTransformation,
    schedule: optax.Schedule,
    loss_config: ml_collections.ConfigDict,
    mesh: Mesh,
    preprocessing: Preprocessing | None = None,
) -> TrainStep:
  """Returns the jitted ``train_step(state, batch) -> (state, metrics)``.

  ``batch`` holds 'image' (B, H, W, 3) and 'label' (B, H, W) int, sharded over
  'data' (see ``mesh.global_batch``). With ``preprocessing`` (the model's input
  normalisation) the images are the loader's uint8 RGB crops with their
  'image_box' (B, 4), normalised inside the step (:func:`normalize_images`);
  without it they are the model's input as they are. The input state is donated: do not use it after the call. Metrics are
  replicated float32 scalars: loss, main, aux, lr (the rate this step used),
  grad_norm (before clipping) and finite (1.0 when loss and gradients are
  finite; the trainer stops otherwise).
  """

  def loss_fn(params, batch_stats, images, labels, dropout_key):
    model = model_def.merge(params, batch_stats, dropout_key=dropout_key)
    model.train()
    logits, aux_logits = model(images)
    loss, metrics = segmentation_loss(logits, aux_logits, labels, loss_config)
    new_batch_stats = nnx.to_pure_dict(nnx.state(model, nnx.BatchStat))
    return loss, (metrics, new_batch_stats)

  def train_step(state: TrainState, batch: Batch):
    images = batch["image"]
    if preprocessing is not None:
      images = normalize_images(images, batch["image_box"], preprocessing)
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    # Under the mesh, kernels XLA cannot partition (Pallas) run per device in a shard_map.
    with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
      (loss, (metrics, batch_stats)), grads = grad_fn(
          state.params, state.batch_stats, images, batch["label"], state.dropout_key()
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
