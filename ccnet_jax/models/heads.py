"""Segmentation heads: criss-cross / non-local attention blocks, the RCCA head, the aux head."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from ccnet_jax.models.layers import ConvNormAct, Dtype, channel_dropout, conv2d
from ccnet_jax.ops.criss_cross import criss_cross_attention
from ccnet_jax.ops.implementations import get_criss_cross
from ccnet_jax.ops.non_local import non_local_attention

Array = jax.Array


class _QueryKeyValueAttention(nnx.Module):
  """1x1 query/key/value projections, an attention op, and ``x + gamma * context``.

  gamma starts at 0, so a freshly added block is the identity and training
  decides how much context to mix in.
  """

  def __init__(
      self,
      channels: int,
      *,
      key_channels: int | None = None,
      dtype: Dtype = None,
      rngs: nnx.Rngs,
  ):
    key_channels = key_channels or max(channels // 8, 1)
    self.query = conv2d(channels, key_channels, 1, use_bias=True, dtype=dtype, rngs=rngs)
    self.key = conv2d(channels, key_channels, 1, use_bias=True, dtype=dtype, rngs=rngs)
    self.value = conv2d(channels, channels, 1, use_bias=True, dtype=dtype, rngs=rngs)
    self.gamma = nnx.Param(jnp.zeros((1,), jnp.float32))

  def _attend(self, q: Array, k: Array, v: Array) -> Array:
    raise NotImplementedError

  def __call__(self, x: Array) -> Array:
    context = self._attend(self.query(x), self.key(x), self.value(x))
    return x + self.gamma[...].astype(context.dtype) * context


class CrissCrossAttention(_QueryKeyValueAttention):
  """The CCA module: every pixel gathers context from its row and its column."""

  def __init__(self, channels: int, *, impl: str = "einsum", **kwargs):
    super().__init__(channels, **kwargs)
    get_criss_cross(impl)  # Fail at construction on an unknown name.
    self.impl = impl

  def _attend(self, q, k, v):
    return get_criss_cross(self.impl)(q, k, v)

  def attention_map(self, x: Array) -> Array:
    """The (B, H, W, H + W) attention weights (column then row) for visualisation."""
    _, attention = criss_cross_attention(
        self.query(x), self.key(x), self.value(x), return_attention=True
    )
    return attention


class NonLocalAttention(_QueryKeyValueAttention):
  """The embedded-Gaussian non-local block: every pixel attends to every pixel."""

  def _attend(self, q, k, v):
    return non_local_attention(q, k, v)


ATTENTIONS = {"criss_cross": CrissCrossAttention, "non_local": NonLocalAttention, "none": None}
# More loops than this add nothing the paper measured (R <= 3) and only cost time; the bound
# keeps a mistyped recurrence from building a program of millions of loops.
MAX_RECURRENCE = 16


class RCCAHead(nnx.Module):
  """The recurrent criss-cross attention head of CCNet (``RCCAModule`` upstream).

  conva (3x3, C -> C/4) -> R applications of ONE attention block (shared
  weights) -> convb (3x3) -> bottleneck over concat[x, convb] -> dropout ->
  1x1 classifier. With ``attention='none'`` or ``recurrence=0`` it is the FCN
  baseline of the paper's ablation; with 'non_local' the non-local baseline.
  """

  def __init__(
      self,
      in_features: int,
      num_classes: int,
      *,
      attention: str = "criss_cross",
      recurrence: int = 2,
      channels: int | None = None,
      out_channels: int = 512,
      activation: str = "leaky_relu",
      dropout: float = 0.1,
      cca_impl: str = "einsum",
      dtype: Dtype = None,
      rngs: nnx.Rngs,
  ):
    if attention not in ATTENTIONS:
      raise ValueError(f"model.head.attention={attention!r} is not one of {sorted(ATTENTIONS)}.")
    if not 0 <= recurrence <= MAX_RECURRENCE:
      raise ValueError(f"model.head.recurrence={recurrence} must be in 0..{MAX_RECURRENCE}.")
    channels = channels or in_features // 4
    conv = lambda i, o: ConvNormAct(i, o, 3, activation=activation, dtype=dtype, rngs=rngs)
    self.conva = conv(in_features, channels)
    self.recurrence = recurrence if attention != "none" else 0
    extra = {"impl": cca_impl} if attention == "criss_cross" else {}
    self.attention = (
        ATTENTIONS[attention](channels, dtype=dtype, rngs=rngs, **extra)
        if self.recurrence
        else None
    )
    self.convb = conv(channels, channels)
    self.bottleneck = conv(in_features + channels, out_channels)
    self.dropout = channel_dropout(dropout, rngs=rngs)
    self.classifier = conv2d(out_channels, num_classes, 1, use_bias=True, dtype=dtype, rngs=rngs)

  def context(self, x: Array) -> Array:
    """conva, then the R attention steps: the features that convb reads."""
    y = self.conva(x)
    for _ in range(self.recurrence):
      y = self.attention(y)
    return y

  def attention_maps(self, x: Array) -> list[Array]:
    """Each loop's (B, H, W, H + W) criss-cross weights (column then row), loop 1 first."""
    if not isinstance(self.attention, CrissCrossAttention):
      raise ValueError(
          "This model's head has no criss-cross attention (model.head.attention is not"
          " 'criss_cross' or model.head.recurrence is 0): there are no attention maps to show."
      )
    y, maps = self.conva(x), []
    for _ in range(self.recurrence):
      maps.append(self.attention.attention_map(y))
      y = self.attention(y)
    return maps

  def __call__(self, x: Array) -> Array:
    y = self.convb(self.context(x))
    y = self.bottleneck(jnp.concatenate([x, y.astype(x.dtype)], axis=-1))
    return self.classifier(self.dropout(y))


class AuxHead(nnx.Module):
  """The deep-supervision (DSN) head on stage 3: 3x3 conv-BN-act, dropout, 1x1 classifier."""

  def __init__(
      self,
      in_features: int,
      num_classes: int,
      *,
      channels: int = 512,
      use_bias: bool = True,
      activation: str = "leaky_relu",
      dropout: float = 0.1,
      dtype: Dtype = None,
      rngs: nnx.Rngs,
  ):
    self.conv = ConvNormAct(
        in_features,
        channels,
        3,
        use_bias=use_bias,
        activation=activation,
        dtype=dtype,
        rngs=rngs,
    )
    self.dropout = channel_dropout(dropout, rngs=rngs)
    self.classifier = conv2d(channels, num_classes, 1, use_bias=True, dtype=dtype, rngs=rngs)

  def __call__(self, x: Array) -> Array:
    return self.classifier(self.dropout(self.conv(x)))
