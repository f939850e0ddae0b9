"""Pixel-wise segmentation losses: cross-entropy, OHEM cross-entropy, and the DSN sum.

Everything runs on device with static shapes, so the losses live inside the
jitted train step. Softmax and reductions are float32 whatever the model dtype.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections

from ccnet_jax.ops.resize import resize_bilinear

Array = jax.Array


def _log_probs_and_valid(logits: Array, labels: Array, ignore_label: int):
  """Float32 log-softmax over classes, the validity mask, and labels safe to gather."""
  if logits.shape[:-1] != labels.shape:
    raise ValueError(
        f"logits {logits.shape} and labels {labels.shape} must agree on every axis but the "
        "last; upsample the logits to the label size first."
    )
  log_probs = jax.nn.log_softmax(logits.astype(_float32_or_wider(logits)), axis=-1)
  valid = labels != ignore_label
  safe_labels = jnp.where(valid, labels, 0).astype(jnp.int32)
  target_log_probs = jnp.take_along_axis(log_probs, safe_labels[..., None], axis=-1)[..., 0]
  return target_log_probs, valid


def _float32_or_wider(x: Array) -> jnp.dtype:
  """float32, or float64 for float64 input (verification runs)."""
  return jnp.promote_types(x.dtype, jnp.float32)


def _masked_mean(values: Array, mask: Array) -> Array:
  """Mean of ``values`` where ``mask``; 0 when nothing is selected."""
  total = jnp.sum(jnp.where(mask, values, 0.0))
  return total / jnp.maximum(jnp.sum(mask), 1).astype(values.dtype)


def cross_entropy(logits: Array, labels: Array, *, ignore_label: int = 255) -> Array:
  """Mean cross-entropy over pixels whose label is not ``ignore_label``.

  Args:
    logits: (..., num_classes) scores of any float dtype.
    labels: integer class ids with ``logits.shape[:-1]``.
    ignore_label: label of pixels that take no part in the loss.

  Returns:
    A float32 scalar, 0 when no pixel is valid (as ``torch.nn.CrossEntropyLoss``
    would give NaN, which would stop training on an all-void crop).
  """
  target_log_probs, valid = _log_probs_and_valid(logits, labels, ignore_label)
  return _masked_mean(-target_log_probs, valid)


def ohem_cross_entropy(
    logits: Array,
    labels: Array,
    *,
    thresh: float = 0.7,
    min_kept: int = 100_000,
    ignore_label: int = 255,
) -> Array:
  """Online hard example mining cross-entropy, as the official ``OhemCrossEntropy2d``.

  Pixels whose target-class probability is at most a threshold are kept: the
  threshold is ``max(thresh, p_k)`` where ``p_k`` is the ``min_kept``-th smallest
  target probability, so at least ``min_kept`` pixels always count. When fewer
  than ``min_kept`` pixels are valid, all valid pixels count. ``min_kept <= 0``
  disables mining (plain cross-entropy), as upstream.

  The ``min_kept``-th value comes from a sort of the whole batch: static shapes,
  no host round trip.
  """
  target_log_probs, valid = _log_probs_and_valid(logits, labels, ignore_label)
  if min_kept <= 0:
    return _masked_mean(-target_log_probs, valid)
  # Ignored pixels get probability 1 (upstream's masked_fill), i.e. never hard.
  target_probs = jnp.where(valid, jnp.exp(target_log_probs), 1.0).reshape(-1)
  k = min(min_kept, target_probs.size)
  kth_smallest = jnp.sort(target_probs)[k - 1]
  num_valid = jnp.sum(valid)
  threshold = jnp.where(
      num_valid < min_kept,
      jnp.inf,
      jnp.maximum(jnp.asarray(thresh, kth_smallest.dtype), kth_smallest),
  )
  kept = valid & (target_probs.reshape(valid.shape) <= threshold)
  return _masked_mean(-target_log_probs, kept)


def segmentation_loss(
    logits: Array,
    aux_logits: Array | None,
    labels: Array,
    loss_config: ml_collections.ConfigDict,
) -> tuple[Array, dict[str, Array]]:
  """The official DSN criterion: main loss + ``aux_weight`` x cross-entropy of the aux head.

  Both logit maps are bilinearly upsampled to the label size first
  (``align_corners`` as configured; the official code uses True). The main
  loss is OHEM cross-entropy when ``loss_config.ohem`` is set.

  Args:
    logits: (B, h, w, K) main-head scores.
    aux_logits: (B, h', w', K) aux-head scores, or None (then aux counts 0).
    labels: (B, H, W) integer labels.
    loss_config: fields align_corners, ohem, ohem_thresh, ohem_min_kept, aux_weight.
      Pixels labelled 255 (void, as every data source writes them) take no part.

  Returns:
    ``(loss, {'loss', 'main', 'aux'})``, all float32 scalars.
  """
  if labels.ndim != 3:
    raise ValueError(f"labels must be (batch, height, width), got shape {labels.shape}.")
  size = labels.shape[1:3]
  upsample = lambda x: resize_bilinear(x, size, align_corners=loss_config.align_corners)
  if loss_config.ohem:
    main = ohem_cross_entropy(
        upsample(logits),
        labels,
        thresh=loss_config.ohem_thresh,
        min_kept=loss_config.ohem_min_kept,
    )
  else:
    main = cross_entropy(upsample(logits), labels)
  if aux_logits is None:
    aux = jnp.zeros((), main.dtype)
  else:
    aux = cross_entropy(upsample(aux_logits), labels)
  loss = main + loss_config.aux_weight * aux
  return loss, {"loss": loss, "main": main, "aux": aux}
