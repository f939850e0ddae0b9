"""How each recipe's reference code initialises the network, applied to a built CCNet.

A CCNet is built with ``torch.nn``'s defaults (``layers.conv2d``, BatchNorm weight 1 and
bias 0, gamma 0); a scheme then redraws its parameters as the reference code does after
building its modules. ``model.init.backbone`` and ``model.init.head`` (the RCCA head and
the aux head) each name one:

Backbone schemes:
  torch        torch.nn's defaults: every conv weight uniform on +-1/sqrt(fan_in)
               (``kaiming_uniform_(a=sqrt(5))``, torch/nn/modules/conv.py), norms 1 / 0.
               The official CCNet (speedinghzl/CCNet networks/ccnet.py) has no init code:
               its ResNet starts here unless ImageNet weights are loaded.
  torchvision  torchvision/models/resnet.py ``ResNet.__init__``: conv weights
               ``kaiming_normal_(mode='fan_out', nonlinearity='relu')``, norms 1 / 0. The
               official ImageNet backbone's source (CSAILVision semantic-segmentation-pytorch
               mit_semseg/models/resnet.py: normal(0, sqrt(2 / (kh kw out)))) is the same.
  mmseg        mmseg/models/backbones/resnet.py ``ResNet`` without ``pretrained``: its
               init_cfg Kaiming on Conv2d (mmengine's ``kaiming_init``: normal, fan_out,
               relu, bias 0), Constant 1 on norms, then ``zero_init_residual=True``: the
               last norm of each residual block (``norm3``, ``norm2`` of a BasicBlock)
               weight 0 and bias 0.

Head schemes:
  torch  torch.nn's defaults for every conv weight and bias (the official RCCAModule and
         DSN head, networks/ccnet.py), norms (InPlaceABNSync, inplace_abn/abn.py
         ``reset_parameters``) 1 / 0.
  mmseg  mmcv/cnn/bricks/conv_module.py ``ConvModule.init_weights`` for each conv-norm-act
         (``kaiming_init``: normal, fan_out, nonlinearity of its activation (leaky_relu
         with its slope, else relu), bias 0; norm 1 / 0), and
         mmseg/models/decode_heads/decode_head.py ``BaseDecodeHead``'s init_cfg for the
         classifier ``conv_seg``: normal(0, 0.01), bias 0.
  kaiming  No reference code's: every conv of the head, the attention's query, key and value
         and the classifier included, Kaiming normal over fan_out (ReLU gain), biases 0;
         norms 1 / 0. Random queries and keys of this scale give attention energies of a few
         units from the start, with which short runs from scratch (the demo,
         configs/synthetic.py) learn to use the attention; from torch's or mmseg's smaller
         ones they did not within such a budget (see README, "Initialisation").

In the torch and mmseg head schemes the attention's query/key/value 1x1 convs keep torch's
defaults (official cc_attention/functions.py and mmcv/ops/cc_attention.py build them as plain
``nn.Conv2d``). Gamma is 0 in every scheme.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from ccnet_jax.models import initializers
from ccnet_jax.models.ccnet import CCNet
from ccnet_jax.models.heads import CrissCrossAttention, NonLocalAttention
from ccnet_jax.models.layers import ConvNormAct
from ccnet_jax.models.resnet import BasicBlock, Bottleneck, ResNet

INPLACE_ABN_SLOPE = 0.01  # The negative slope of layers.ACTIVATIONS['leaky_relu'].


@dataclasses.dataclass(frozen=True)
class ConvInit:
  """A convolution's kernel initialiser, and its bias initialiser given the fan-in."""

  kernel: initializers.Initializer
  bias: Callable[[int], initializers.Initializer] = initializers.zeros_for_any_fan


TORCH = ConvInit(initializers.torch_conv_kernel, initializers.torch_conv_bias)
KAIMING_RELU = ConvInit(initializers.kaiming_normal_fan_out())


@dataclasses.dataclass(frozen=True)
class BackboneScheme:
  conv: ConvInit
  zero_last_norm: bool = False  # Residual blocks start as the identity (mmseg).


@dataclasses.dataclass(frozen=True)
class HeadScheme:
  conv: Callable[[str], ConvInit]  # Of a conv-norm-act, given its activation.
  classifier: ConvInit
  projections: ConvInit = TORCH  # The attention's query, key and value.


def _mmcv_conv_module(activation: str) -> ConvInit:
  """``ConvModule.init_weights``: Kaiming for the activation that follows the conv."""
  slope = INPLACE_ABN_SLOPE if activation == "leaky_relu" else 0.0
  return ConvInit(initializers.kaiming_normal_fan_out(slope))


BACKBONE_SCHEMES = {
    "torch": BackboneScheme(TORCH),
    "torchvision": BackboneScheme(KAIMING_RELU),
    "mmseg": BackboneScheme(KAIMING_RELU, zero_last_norm=True),
}
HEAD_SCHEMES = {
    "torch": HeadScheme(lambda activation: TORCH, TORCH),
    "mmseg": HeadScheme(_mmcv_conv_module, ConvInit(initializers.normal(0.01))),
    "kaiming": HeadScheme(lambda activation: KAIMING_RELU, KAIMING_RELU, KAIMING_RELU),
}


class _Keys:
  """A fresh key per layer, in the (deterministic) order the layers are visited."""

  def __init__(self, key: jax.Array):
    self.key, self.count = key, 0

  def __call__(self) -> jax.Array:
    self.count += 1
    return jax.random.fold_in(self.key, self.count)


def _draw_conv(conv: nnx.Conv, init: ConvInit, keys: _Keys) -> None:
  shape, dtype = conv.kernel.shape, conv.kernel.dtype
  conv.kernel[...] = init.kernel(keys(), shape, dtype)
  if conv.bias is not None:
    conv.bias[...] = init.bias(initializers.fan_in(shape))(keys(), conv.bias.shape, dtype)


def _reset_norm(norm: nnx.BatchNorm, scale: float = 1.0) -> None:
  norm.scale[...] = jnp.full_like(norm.scale[...], scale)
  norm.bias[...] = jnp.zeros_like(norm.bias[...])


def check_schemes(*, backbone: str, head: str) -> None:
  """Refuses unknown scheme names, naming the config field and the known names."""
  for field, name, schemes in (
      ("backbone", backbone, BACKBONE_SCHEMES),
      ("head", head, HEAD_SCHEMES),
  ):
    if name not in schemes:
      raise ValueError(f"model.init.{field}={name!r} is not one of {sorted(schemes)}.")


def initialise_backbone(backbone: ResNet | nnx.Module, scheme: str, key: jax.Array) -> None:
  """Redraws every conv of a ResNet (or of one block) and resets its norms as ``scheme``
  does."""
  rule, keys = BACKBONE_SCHEMES[scheme], _Keys(key)
  for _, module in nnx.iter_graph(backbone):
    if isinstance(module, nnx.Conv):
      _draw_conv(module, rule.conv, keys)
    elif isinstance(module, nnx.BatchNorm):
      _reset_norm(module)
  if rule.zero_last_norm:
    for _, block in nnx.iter_graph(backbone):
      if isinstance(block, Bottleneck):
        _reset_norm(block.bn3, 0.0)
      elif isinstance(block, BasicBlock):
        _reset_norm(block.bn2, 0.0)


def initialise_head(head: nnx.Module, scheme: str, key: jax.Array) -> None:
  """Redraws an RCCA or aux head: its conv-norm-acts, attention and classifier."""
  rule, keys = HEAD_SCHEMES[scheme], _Keys(key)
  for _, module in nnx.iter_graph(head):
    if isinstance(module, ConvNormAct):
      _draw_conv(module.conv, rule.conv(module.activation), keys)
      _reset_norm(module.norm)
    elif isinstance(module, (CrissCrossAttention, NonLocalAttention)):
      for projection in (module.query, module.key, module.value):
        _draw_conv(projection, rule.projections, keys)
      module.gamma[...] = jnp.zeros_like(module.gamma[...])
  _draw_conv(head.classifier, rule.classifier, keys)


def initialise(model: CCNet, *, backbone: str, head: str, key: jax.Array) -> None:
  """Redraws every parameter of ``model`` as the named schemes do (see the module doc)."""
  check_schemes(backbone=backbone, head=head)
  initialise_backbone(model.backbone, backbone, jax.random.fold_in(key, 0))
  for index, part in enumerate((model.head, model.aux_head), start=1):
    if part is not None:
      initialise_head(part, head, jax.random.fold_in(key, index))
