"""Dilated ResNets (18 to 152) with the stems of the official CCNet, mmseg and torchvision.

Attribute names follow the PyTorch modules (``stem.conv1``, ``layer3[5].bn2``,
``downsample.conv``...) so that checkpoint importers are a readable mapping.
Output stride 8 or 16 is reached by replacing the stride of the last stages with
dilation, as in DeepLab and CCNet.
"""

from __future__ import annotations

from typing import Sequence

import jax
from flax import nnx

from ccnet_jax.models import remat as remat_lib
from ccnet_jax.models.layers import Dtype, batch_norm, conv2d, max_pool

Array = jax.Array

# Stem variants: channels of the three (or one) stem convolutions in units of
# base_width, and whether the stem max-pool rounds its output size up.
STEMS = {
    # Official CCNet / MIT ImageNet ResNet: 3x3 64-64-128, max-pool with ceil_mode.
    "deep": {"widths": (1, 1, 2), "ceil_mode": True},
    # mmseg/mmcv ResNetV1c: 3x3 32-32-64, max-pool without ceil_mode.
    "v1c": {"widths": (0.5, 0.5, 1), "ceil_mode": False},
    # torchvision: one 7x7 convolution.
    "classic": {"widths": (1,), "ceil_mode": False},
}

# (block type, blocks per stage).
DEPTHS = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
    152: ("bottleneck", (3, 8, 36, 3)),
}

# Strides and dilations of stages 1-4 for each output stride.
OUTPUT_STRIDES = {
    8: ((1, 2, 1, 1), (1, 1, 2, 4)),
    16: ((1, 2, 2, 1), (1, 1, 1, 2)),
    32: ((1, 2, 2, 2), (1, 1, 1, 1)),
}


class Downsample(nnx.Module):
  """The projection shortcut: 1x1 convolution (with the block's stride) + BatchNorm."""

  def __init__(self, in_features, out_features, *, stride, dtype: Dtype, rngs: nnx.Rngs):
    self.conv = conv2d(in_features, out_features, 1, stride=stride, dtype=dtype, rngs=rngs)
    self.bn = batch_norm(out_features, dtype=dtype, rngs=rngs)

  def __call__(self, x: Array) -> Array:
    return self.bn(self.conv(x))


def _shortcut(in_features, out_features, stride, dtype, rngs) -> Downsample | None:
  """A projection where the block changes shape, else None (identity shortcut)."""
  if stride == 1 and in_features == out_features:
    return None
  return Downsample(in_features, out_features, stride=stride, dtype=dtype, rngs=rngs)


class BasicBlock(nnx.Module):
  """Two 3x3 convolutions (ResNet-18/34)."""

  expansion = 1

  def __init__(
      self,
      in_features,
      planes,
      *,
      stride=1,
      dilation=1,
      dilated_conv="auto",
      dtype: Dtype = None,
      rngs: nnx.Rngs,
  ):
    out_features = planes * self.expansion
    dilated = dict(dilation=dilation, dilated_conv=dilated_conv)
    self.conv1 = conv2d(in_features, planes, 3, stride=stride, **dilated, dtype=dtype, rngs=rngs)
    self.bn1 = batch_norm(planes, dtype=dtype, rngs=rngs)
    self.conv2 = conv2d(planes, planes, 3, **dilated, dtype=dtype, rngs=rngs)
    self.bn2 = batch_norm(planes, dtype=dtype, rngs=rngs)
    self.downsample = _shortcut(in_features, out_features, stride, dtype, rngs)

  def __call__(self, x: Array) -> Array:
    shortcut = x if self.downsample is None else self.downsample(x)
    y = jax.nn.relu(self.bn1(self.conv1(x)))
    y = self.bn2(self.conv2(y))
    return jax.nn.relu(y + shortcut)


class Bottleneck(nnx.Module):
  """1x1 -> 3x3 (strided, dilated) -> 1x1, the 'pytorch' style of ResNet-50+."""

  expansion = 4

  def __init__(
      self,
      in_features,
      planes,
      *,
      stride=1,
      dilation=1,
      dilated_conv="auto",
      dtype: Dtype = None,
      rngs: nnx.Rngs,
  ):
    out_features = planes * self.expansion
    self.conv1 = conv2d(in_features, planes, 1, dtype=dtype, rngs=rngs)
    self.bn1 = batch_norm(planes, dtype=dtype, rngs=rngs)
    dilated = dict(dilation=dilation, dilated_conv=dilated_conv)
    self.conv2 = conv2d(planes, planes, 3, stride=stride, **dilated, dtype=dtype, rngs=rngs)
    self.bn2 = batch_norm(planes, dtype=dtype, rngs=rngs)
    self.conv3 = conv2d(planes, out_features, 1, dtype=dtype, rngs=rngs)
    self.bn3 = batch_norm(out_features, dtype=dtype, rngs=rngs)
    self.downsample = _shortcut(in_features, out_features, stride, dtype, rngs)

  def __call__(self, x: Array) -> Array:
    shortcut = x if self.downsample is None else self.downsample(x)
    y = jax.nn.relu(self.bn1(self.conv1(x)))
    y = jax.nn.relu(self.bn2(self.conv2(y)))
    y = self.bn3(self.conv3(y))
    return jax.nn.relu(y + shortcut)


BLOCKS = {"basic": BasicBlock, "bottleneck": Bottleneck}


class Stem(nnx.Module):
  """conv-BN-ReLU (three 3x3 or one 7x7, the first with stride 2), then a 3x3/2 max-pool."""

  def __init__(self, kind: str, base_width: int, *, ceil_mode: bool, dtype: Dtype, rngs: nnx.Rngs):
    widths = [int(base_width * w) for w in STEMS[kind]["widths"]]
    kernel = 7 if kind == "classic" else 3
    in_features = 3
    for index, width in enumerate(widths, start=1):
      stride = 2 if index == 1 else 1
      setattr(
          self,
          f"conv{index}",
          conv2d(in_features, width, kernel, stride=stride, dtype=dtype, rngs=rngs),
      )
      setattr(self, f"bn{index}", batch_norm(width, dtype=dtype, rngs=rngs))
      in_features = width
    self.num_convs = len(widths)
    self.out_features = in_features
    self.ceil_mode = ceil_mode

  def __call__(self, x: Array) -> Array:
    for index in range(1, self.num_convs + 1):
      x = getattr(self, f"conv{index}")(x)
      x = jax.nn.relu(getattr(self, f"bn{index}")(x))
    return max_pool(x, kernel=3, stride=2, padding=1, ceil_mode=self.ceil_mode)


def block_dilations(
    num_blocks: int,
    dilation: int,
    *,
    multi_grid: Sequence[int] | None,
    contract_dilation: bool,
) -> list[int]:
  """Dilation of each block of a stage.

  ``multi_grid`` (the last stage only) multiplies the stage dilation block by
  block; ``contract_dilation`` (mmseg) halves the first block's dilation in a
  dilated stage.
  """
  grid = tuple(multi_grid) if multi_grid else (1,)
  dilations = [dilation * grid[i % len(grid)] for i in range(num_blocks)]
  if contract_dilation and dilation > 1:
    dilations[0] = dilations[0] // 2
  return dilations


class ResNet(nnx.Module):
  """A dilated ResNet returning the outputs of its four stages (strides 4, 8, and OS)."""

  def __init__(
      self,
      depth: int = 101,
      *,
      stem: str = "deep",
      output_stride: int = 8,
      multi_grid: Sequence[int] | None = (1, 1, 1),
      contract_dilation: bool = False,
      ceil_mode: bool | None = None,
      base_width: int = 64,
      remat: str = "none",
      dilated_conv: str = "auto",
      dtype: Dtype = None,
      rngs: nnx.Rngs,
  ):
    """Builds the network.

    Args:
      depth: 18, 34, 50, 101 or 152.
      stem: 'deep' (official CCNet), 'v1c' (mmseg) or 'classic' (torchvision).
      output_stride: 8, 16 or 32.
      multi_grid: per-block dilation multipliers of the last stage.
      contract_dilation: halve the first dilation of each dilated stage (mmseg).
      ceil_mode: the stem max-pool's rounding; None takes the stem's default.
      base_width: channels of the first stage's 3x3 convolutions (64 in every
        published model); smaller values give cheap networks for tests and demos.
      remat: what the stem and each residual block recompute in the backward
        pass: 'none', 'save_convs' or 'blocks' (see ``models.remat``).
      dilated_conv: the form of the dilated convolutions ('auto', 'lax',
        'space_to_batch', 'space_to_batch_wgrad'; see ``ops.dilated_conv``).
      dtype: computation dtype (parameters stay float32).
      rngs: parameter initialisation keys.
    """
    if depth not in DEPTHS:
      raise ValueError(f"model.backbone.depth={depth} is not one of {sorted(DEPTHS)}.")
    if stem not in STEMS:
      raise ValueError(f"model.backbone.stem={stem!r} is not one of {sorted(STEMS)}.")
    if output_stride not in OUTPUT_STRIDES:
      raise ValueError(
          f"model.backbone.output_stride={output_stride} is not one of"
          f" {sorted(OUTPUT_STRIDES)}."
      )
    self.remat = remat_lib.check_remat(remat)
    block_kind, stage_sizes = DEPTHS[depth]
    block = BLOCKS[block_kind]
    if ceil_mode is None:
      ceil_mode = STEMS[stem]["ceil_mode"]
    self.stem = Stem(stem, base_width, ceil_mode=ceil_mode, dtype=dtype, rngs=rngs)

    strides, dilations = OUTPUT_STRIDES[output_stride]
    in_features = self.stem.out_features
    stage_features = []
    for index, (num_blocks, stride, dilation) in enumerate(
        zip(stage_sizes, strides, dilations), start=1
    ):
      planes = base_width * 2 ** (index - 1)
      per_block = block_dilations(
          num_blocks,
          dilation,
          multi_grid=multi_grid if index == 4 else None,
          contract_dilation=contract_dilation,
      )
      blocks = []
      for position, block_dilation in enumerate(per_block):
        blocks.append(
            block(
                in_features,
                planes,
                stride=stride if position == 0 else 1,
                dilation=block_dilation,
                dilated_conv=dilated_conv,
                dtype=dtype,
                rngs=rngs,
            )
        )
        in_features = planes * block.expansion
      setattr(self, f"layer{index}", nnx.List(blocks))
      stage_features.append(in_features)
    self.out_features = tuple(stage_features)

  def __call__(self, x: Array) -> tuple[Array, Array, Array, Array]:
    x = remat_lib.call(self.stem, x, self.remat)
    features = []
    for index in range(1, 5):
      for block in getattr(self, f"layer{index}"):
        x = remat_lib.call(block, x, self.remat)
      features.append(x)
    return tuple(features)
