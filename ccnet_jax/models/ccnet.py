"""CCNet: a dilated ResNet, the RCCA head on stage 4 and the DSN aux head on stage 3."""

from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp
from flax import nnx

from ccnet_jax.models.heads import AuxHead, RCCAHead
from ccnet_jax.models.layers import Dtype
from ccnet_jax.models.resnet import ResNet

Array = jax.Array


class CCNet(nnx.Module):
  """Returns ``(logits, aux_logits)``, NHWC float32 (float64 for a float64 model) at the
  backbone's output stride.

  Upsampling to the label size belongs to the loss and to inference, as in the
  official code. ``aux_logits`` is None when the aux head is disabled.
  """

  def __init__(
      self,
      num_classes: int,
      *,
      backbone: Mapping[str, Any] | None = None,
      head: Mapping[str, Any] | None = None,
      aux: Mapping[str, Any] | None = None,
      cca_impl: str = "einsum",
      remat: str = "none",
      dilated_conv: str = "auto",
      dtype: Dtype = None,
      rngs: nnx.Rngs,
  ):
    """Builds the network.

    Args:
      num_classes: output channels of both classifiers.
      backbone: keyword arguments of :class:`ResNet` (default: official ResNet-101).
      head: keyword arguments of :class:`RCCAHead` (default: R=2, official head).
      aux: keyword arguments of :class:`AuxHead`; ``{'enabled': False}`` drops it.
      cca_impl: criss-cross attention implementation ('einsum', 'auto', ...).
      remat: the backbone's rematerialisation policy (see ``models.remat``).
      dilated_conv: the form of the backbone's dilated convolutions (see
        ``ops.dilated_conv``).
      dtype: computation dtype; parameters and logits stay float32 (except float64).
      rngs: initialisation and dropout keys.
    """
    aux = dict(aux or {})
    self.dtype = dtype
    self.backbone = ResNet(
        **dict(backbone or {}), remat=remat, dilated_conv=dilated_conv, dtype=dtype, rngs=rngs
    )
    stage3_features, stage4_features = self.backbone.out_features[2:]
    self.head = RCCAHead(
        stage4_features,
        num_classes,
        **dict(head or {}),
        cca_impl=cca_impl,
        dtype=dtype,
        rngs=rngs,
    )
    self.aux_head = (
        AuxHead(stage3_features, num_classes, **aux, dtype=dtype, rngs=rngs)
        if aux.pop("enabled", True)
        else None
    )

  def attention_maps(self, images: Array) -> list[Array]:
    """The head's criss-cross weights, one (B, h, w, h + w) float32 array per loop."""
    x = images if self.dtype is None else images.astype(self.dtype)
    return self.head.attention_maps(self.backbone(x)[3])

  def __call__(self, images: Array) -> tuple[Array, Array | None]:
    x = images if self.dtype is None else images.astype(self.dtype)
    _, _, stage3, stage4 = self.backbone(x)
    out_dtype = jnp.promote_types(x.dtype, jnp.float32)
    logits = self.head(stage4).astype(out_dtype)
    if self.aux_head is None:
      return logits, None
    return logits, self.aux_head(stage3).astype(out_dtype)
