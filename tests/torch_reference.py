"""Independent PyTorch implementations of the networks whose checkpoints are imported.

Written from the upstream sources (speedinghzl/CCNet ``networks/ccnet.py`` with
InPlaceABNSync, mmsegmentation's ResNetV1c + CCHead + FCNHead, torchvision /
MIT / mmcv ImageNet ResNets), with the upstream module names, so their
``state_dict()`` has the released checkpoints' keys. Widths and depths are
parameters so tests can build small networks with random weights.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

ABN_EPS = 1e-5


class InPlaceABN(nn.Module):
  """inplace_abn's forward: BN with scale |weight| + eps, then an activation.

  In train mode it normalises with the batch statistics and moves the running ones
  by momentum 0.1, the variance by the unbiased estimate, as inplace_abn does.
  """

  def __init__(self, channels: int, activation: str = "leaky_relu"):
    super().__init__()
    self.weight = nn.Parameter(torch.ones(channels))
    self.bias = nn.Parameter(torch.zeros(channels))
    self.register_buffer("running_mean", torch.zeros(channels))
    self.register_buffer("running_var", torch.ones(channels))
    self.activation = activation
    self.calibrate = False

  def forward(self, x):
    if self.calibrate:  # Running statistics := this batch's (see randomise_).
      self.running_mean.copy_(x.mean((0, 2, 3)))
      self.running_var.copy_(x.var((0, 2, 3)))
    x = F.batch_norm(
        x,
        self.running_mean,
        self.running_var,
        self.weight.abs() + ABN_EPS,
        self.bias,
        training=self.training,
        momentum=0.1,
        eps=ABN_EPS,
    )
    if self.activation == "leaky_relu":
      return F.leaky_relu(x, 0.01)
    return x


def _norm(kind: str):
  """BatchNorm2d ('bn') or the backbone's InPlaceABN with identity activation ('abn')."""
  return nn.BatchNorm2d if kind == "bn" else (lambda c: InPlaceABN(c, "identity"))


class BasicBlock(nn.Module):
  expansion = 1

  def __init__(self, inplanes, planes, stride, dilation, downsample, norm):
    super().__init__()
    self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, dilation, dilation, bias=False)
    self.bn1 = norm(planes)
    self.conv2 = nn.Conv2d(planes, planes, 3, 1, dilation, dilation, bias=False)
    self.bn2 = norm(planes)
    self.downsample = downsample

  def forward(self, x):
    out = F.relu(self.bn1(self.conv1(x)))
    out = self.bn2(self.conv2(out))
    residual = x if self.downsample is None else self.downsample(x)
    return F.relu(out + residual)


class Bottleneck(nn.Module):
  expansion = 4

  def __init__(self, inplanes, planes, stride, dilation, downsample, norm):
    super().__init__()
    self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
    self.bn1 = norm(planes)
    self.conv2 = nn.Conv2d(planes, planes, 3, stride, dilation, dilation, bias=False)
    self.bn2 = norm(planes)
    self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
    self.bn3 = norm(planes * 4)
    self.downsample = downsample

  def forward(self, x):
    out = F.relu(self.bn1(self.conv1(x)))
    out = F.relu(self.bn2(self.conv2(out)))
    out = self.bn3(self.conv3(out))
    residual = x if self.downsample is None else self.downsample(x)
    return F.relu(out + residual)


LAYOUTS = {
    18: (BasicBlock, (2, 2, 2, 2)),
    34: (BasicBlock, (3, 4, 6, 3)),
    50: (Bottleneck, (3, 4, 6, 3)),
    101: (Bottleneck, (3, 4, 23, 3)),
}


class ResNet(nn.Module):
  """ResNet with stem 'deep' (official / MIT), 'v1c' (mmcv) or 'classic' (torchvision).

  ``dilation_style``: 'official' (layer3 dilation 2, layer4 4, every block),
  'contract' (mmseg: the first block of a dilated stage uses half), or 'none'
  (plain strides, output stride 32).
  """

  def __init__(
      self, depth, *, stem="deep", width=64, norm="bn", dilation_style="official", fc_classes=0
  ):
    super().__init__()
    block, sizes = LAYOUTS[depth]
    norm_layer = _norm(norm)
    self.stem_kind = stem
    if stem == "deep":
      self.conv1 = nn.Conv2d(3, width, 3, 2, 1, bias=False)
      self.bn1 = norm_layer(width)
      self.conv2 = nn.Conv2d(width, width, 3, 1, 1, bias=False)
      self.bn2 = norm_layer(width)
      self.conv3 = nn.Conv2d(width, width * 2, 3, 1, 1, bias=False)
      self.bn3 = norm_layer(width * 2)
      self.maxpool = nn.MaxPool2d(3, 2, 1, ceil_mode=True)
      self.inplanes = width * 2
    elif stem == "v1c":
      half = width // 2
      self.stem = nn.Sequential(
          nn.Conv2d(3, half, 3, 2, 1, bias=False),
          norm_layer(half),
          nn.ReLU(),
          nn.Conv2d(half, half, 3, 1, 1, bias=False),
          norm_layer(half),
          nn.ReLU(),
          nn.Conv2d(half, width, 3, 1, 1, bias=False),
          norm_layer(width),
          nn.ReLU(),
      )
      self.maxpool = nn.MaxPool2d(3, 2, 1)
      self.inplanes = width
    else:
      self.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
      self.bn1 = norm_layer(width)
      self.maxpool = nn.MaxPool2d(3, 2, 1)
      self.inplanes = width
    if dilation_style == "none":
      strides, dilations = (1, 2, 2, 2), (1, 1, 1, 1)
    else:
      strides, dilations = (1, 2, 1, 1), (1, 1, 2, 4)
    for index, (size, stride, dilation) in enumerate(zip(sizes, strides, dilations), start=1):
      per_block = [dilation] * size
      if dilation_style == "contract" and dilation > 1:
        per_block[0] = dilation // 2
      setattr(
          self,
          f"layer{index}",
          self._make_layer(block, width * 2 ** (index - 1), stride, per_block, norm_layer),
      )
    if fc_classes:
      self.fc = nn.Linear(self.inplanes, fc_classes)

  def _make_layer(self, block, planes, stride, dilations, norm_layer):
    downsample = None
    if stride != 1 or self.inplanes != planes * block.expansion:
      downsample = nn.Sequential(
          nn.Conv2d(self.inplanes, planes * block.expansion, 1, stride, bias=False),
          norm_layer(planes * block.expansion),
      )
    layers = [block(self.inplanes, planes, stride, dilations[0], downsample, norm_layer)]
    self.inplanes = planes * block.expansion
    for dilation in dilations[1:]:
      layers.append(block(self.inplanes, planes, 1, dilation, None, norm_layer))
    return nn.Sequential(*layers)

  def forward(self, x):
    if self.stem_kind == "deep":
      x = F.relu(self.bn1(self.conv1(x)))
      x = F.relu(self.bn2(self.conv2(x)))
      x = F.relu(self.bn3(self.conv3(x)))
    elif self.stem_kind == "v1c":
      x = self.stem(x)
    else:
      x = F.relu(self.bn1(self.conv1(x)))
    x = self.maxpool(x)
    outs = []
    for index in range(1, 5):
      x = getattr(self, f"layer{index}")(x)
      outs.append(x)
    return outs


class CrissCrossAttention(nn.Module):
  """The official pure-PyTorch CCA (batched matmuls over columns and rows)."""

  def __init__(self, in_dim, gamma_module=False):
    super().__init__()
    self.query_conv = nn.Conv2d(in_dim, in_dim // 8, 1)
    self.key_conv = nn.Conv2d(in_dim, in_dim // 8, 1)
    self.value_conv = nn.Conv2d(in_dim, in_dim, 1)
    if gamma_module:  # mmcv: gamma = Scale(0.), a 0-d parameter at 'gamma.scale'.
      self.gamma = nn.Module()
      self.gamma.scale = nn.Parameter(torch.tensor(0.0))
    else:
      self.gamma = nn.Parameter(torch.zeros(1))

  def _gamma(self):
    return self.gamma.scale if isinstance(self.gamma, nn.Module) else self.gamma

  def forward(self, x):
    b, _, h, w = x.shape
    q, k, v = self.query_conv(x), self.key_conv(x), self.value_conv(x)
    q_h = q.permute(0, 3, 1, 2).reshape(b * w, -1, h).permute(0, 2, 1)
    q_w = q.permute(0, 2, 1, 3).reshape(b * h, -1, w).permute(0, 2, 1)
    k_h = k.permute(0, 3, 1, 2).reshape(b * w, -1, h)
    k_w = k.permute(0, 2, 1, 3).reshape(b * h, -1, w)
    v_h = v.permute(0, 3, 1, 2).reshape(b * w, -1, h)
    v_w = v.permute(0, 2, 1, 3).reshape(b * h, -1, w)
    diagonal = torch.eye(h, dtype=torch.bool, device=x.device).unsqueeze(0)
    energy_h = torch.bmm(q_h, k_h).masked_fill(diagonal, float("-inf"))
    energy_h = energy_h.view(b, w, h, h).permute(0, 2, 1, 3)
    energy_w = torch.bmm(q_w, k_w).view(b, h, w, w)
    attention = F.softmax(torch.cat([energy_h, energy_w], 3), dim=3)
    att_h = attention[..., :h].permute(0, 2, 1, 3).reshape(b * w, h, h)
    att_w = attention[..., h:].reshape(b * h, w, w)
    out_h = torch.bmm(v_h, att_h.permute(0, 2, 1)).view(b, w, -1, h).permute(0, 2, 3, 1)
    out_w = torch.bmm(v_w, att_w.permute(0, 2, 1)).view(b, h, -1, w).permute(0, 2, 1, 3)
    return self._gamma() * (out_h + out_w) + x


class RCCAModule(nn.Module):
  """Official RCCA head: conva, R x CCA, convb, bottleneck on cat([x, convb]), classifier."""

  def __init__(self, in_channels, out_channels, num_classes):
    super().__init__()
    inter = in_channels // 4
    self.conva = nn.Sequential(
        nn.Conv2d(in_channels, inter, 3, padding=1, bias=False), InPlaceABN(inter)
    )
    self.cca = CrissCrossAttention(inter)
    self.convb = nn.Sequential(nn.Conv2d(inter, inter, 3, padding=1, bias=False), InPlaceABN(inter))
    self.bottleneck = nn.Sequential(
        nn.Conv2d(in_channels + inter, out_channels, 3, padding=1, bias=False),
        InPlaceABN(out_channels),
        nn.Dropout2d(0.1),
        nn.Conv2d(out_channels, num_classes, 1, bias=True),
    )

  def forward(self, x, recurrence):
    output = self.conva(x)
    for _ in range(recurrence):
      output = self.cca(output)
    output = self.convb(output)
    return self.bottleneck(torch.cat([x, output], 1))


class OfficialCCNet(nn.Module):
  """speedinghzl/CCNet's ResNet + RCCA head + DSN head (state dict keys as released)."""

  def __init__(
      self, depth=101, num_classes=19, recurrence=2, width=64, out_channels=512, dsn_channels=512
  ):
    super().__init__()
    self.backbone = ResNet(depth, stem="deep", width=width, norm="abn")
    self.recurrence = recurrence
    features = self.backbone.inplanes
    self.head = RCCAModule(features, out_channels, num_classes)
    self.dsn = nn.Sequential(
        nn.Conv2d(features // 2, dsn_channels, 3, padding=1),
        InPlaceABN(dsn_channels),
        nn.Dropout2d(0.1),
        nn.Conv2d(dsn_channels, num_classes, 1, bias=True),
    )

  def state_dict_like_release(self):
    """Backbone names at the top level, as in the official ResNet class."""
    return {
        (k[len("backbone.") :] if k.startswith("backbone.") else k): v
        for k, v in self.state_dict().items()
    }

  def forward(self, x):
    _, _, stage3, stage4 = self.backbone(x)
    return self.head(stage4, self.recurrence), self.dsn(stage3)


class ConvModule(nn.Module):
  """mmcv ConvModule: conv (no bias when normed) -> BN -> ReLU."""

  def __init__(self, cin, cout, kernel):
    super().__init__()
    self.conv = nn.Conv2d(cin, cout, kernel, padding=kernel // 2, bias=False)
    self.bn = nn.BatchNorm2d(cout)

  def forward(self, x):
    return F.relu(self.bn(self.conv(x)))


class CCHead(nn.Module):

  def __init__(self, in_channels, channels, num_classes, recurrence):
    super().__init__()
    self.recurrence = recurrence
    self.convs = nn.Sequential(
        ConvModule(in_channels, channels, 3), ConvModule(channels, channels, 3)
    )
    self.cca = CrissCrossAttention(channels, gamma_module=True)
    self.conv_cat = ConvModule(in_channels + channels, channels, 3)
    self.conv_seg = nn.Conv2d(channels, num_classes, 1)

  def forward(self, x):
    output = self.convs[0](x)
    for _ in range(self.recurrence):
      output = self.cca(output)
    output = self.convs[1](output)
    output = self.conv_cat(torch.cat([x, output], 1))
    return self.conv_seg(output)


class FCNHead(nn.Module):

  def __init__(self, in_channels, channels, num_classes):
    super().__init__()
    self.convs = nn.Sequential(ConvModule(in_channels, channels, 3))
    self.conv_seg = nn.Conv2d(channels, num_classes, 1)

  def forward(self, x):
    return self.conv_seg(self.convs(x))


class MMSegCCNet(nn.Module):
  """mmseg EncoderDecoder: ResNetV1c-D8 backbone, CCHead, FCN auxiliary head."""

  def __init__(
      self, depth=101, num_classes=19, recurrence=2, width=64, channels=512, aux_channels=256
  ):
    super().__init__()
    self.backbone = ResNet(depth, stem="v1c", width=width, dilation_style="contract")
    features = self.backbone.inplanes
    self.decode_head = CCHead(features, channels, num_classes, recurrence)
    self.auxiliary_head = FCNHead(features // 2, aux_channels, num_classes)

  def forward(self, x):
    _, _, stage3, stage4 = self.backbone(x)
    return self.decode_head(stage4), self.auxiliary_head(stage3)


def _kaiming_relu_(conv: nn.Conv2d) -> None:
  """mmengine ``kaiming_init`` with its defaults: normal, mode fan_out, relu, bias 0."""
  nn.init.kaiming_normal_(conv.weight, a=0, mode="fan_out", nonlinearity="relu")
  if conv.bias is not None:
    nn.init.constant_(conv.bias, 0)


def _constant_(norm: nn.BatchNorm2d, value: float) -> None:
  """mmengine ``constant_init(norm, value, bias=0)``."""
  nn.init.constant_(norm.weight, value)
  nn.init.constant_(norm.bias, 0)


def kaiming_fan_out_init_(module: nn.Module) -> nn.Module:
  """torchvision/models/resnet.py ``ResNet.__init__``'s rule, on every conv of ``module``:
  ``kaiming_normal_(mode='fan_out', nonlinearity='relu')``, biases 0 (torchvision's convs
  have none); norms weight 1, bias 0. Attention gammas keep their 0."""
  with torch.no_grad():
    for m in module.modules():
      if isinstance(m, nn.Conv2d):
        _kaiming_relu_(m)
      elif isinstance(m, (nn.BatchNorm2d, InPlaceABN)):
        nn.init.constant_(m.weight, 1)
        nn.init.constant_(m.bias, 0)
  return module


def mmseg_backbone_init_(backbone: nn.Module) -> nn.Module:
  """mmseg/models/backbones/resnet.py ``ResNet`` trained from scratch (no ``pretrained``).

  Its init_cfg: Kaiming on every Conv2d, Constant 1 on the norms; then, applied after
  (each block's own init_cfg, as ``zero_init_residual=True`` by default), the last norm of
  each residual block (norm3, or norm2 of a BasicBlock) Constant 0.
  """
  with torch.no_grad():
    for m in backbone.modules():
      if isinstance(m, nn.Conv2d):
        _kaiming_relu_(m)
      elif isinstance(m, nn.BatchNorm2d):
        _constant_(m, 1)
    for m in backbone.modules():
      if isinstance(m, Bottleneck):
        _constant_(m.bn3, 0)
      elif isinstance(m, BasicBlock):
        _constant_(m.bn2, 0)
  return backbone


def mmseg_head_init_(head: nn.Module) -> nn.Module:
  """An mmseg decode head (CCHead, FCNHead): mmcv ``ConvModule.init_weights`` for each
  conv module (Kaiming for ReLU, norm 1 / 0) and ``BaseDecodeHead``'s init_cfg for
  ``conv_seg``: normal(0, 0.01), bias 0. The criss-cross attention's convs
  (mmcv/ops/cc_attention.py, plain ``nn.Conv2d``) keep torch's defaults, its gamma 0.
  """
  with torch.no_grad():
    for m in head.modules():
      if isinstance(m, ConvModule):
        _kaiming_relu_(m.conv)
        _constant_(m.bn, 1)
    nn.init.normal_(head.conv_seg.weight, 0, 0.01)
    nn.init.constant_(head.conv_seg.bias, 0)
  return head


def mmseg_init_(net: MMSegCCNet) -> MMSegCCNet:
  """mmsegmentation's initialisation of a whole CCNet trained from scratch, written from
  its source (mmseg ResNet, mmcv ConvModule, mmseg BaseDecodeHead)."""
  mmseg_backbone_init_(net.backbone)
  mmseg_head_init_(net.decode_head)
  mmseg_head_init_(net.auxiliary_head)
  return net


def randomise_(module: nn.Module, seed: int) -> nn.Module:
  """Random weights everywhere: He-scaled convolutions, random norm affine and statistics,
  InPlaceABN weights of both signs, and attention gamma far from its zero init.

  Running statistics are those of a random batch, then perturbed, so activations
  stay O(1) through the depth and a 1e-4 tolerance on the outputs is meaningful.
  """
  generator = torch.Generator().manual_seed(seed)

  def uniform(shape, low, high):
    return torch.rand(shape, generator=generator) * (high - low) + low

  with torch.no_grad():
    for m in module.modules():
      if isinstance(m, (nn.Conv2d, nn.Linear)):
        fan_in = m.weight[0].numel()
        m.weight.copy_(torch.randn(m.weight.shape, generator=generator) * (2 / fan_in) ** 0.5)
        if m.bias is not None:
          m.bias.copy_(torch.randn(m.bias.shape, generator=generator) * 0.1)
      elif isinstance(m, (nn.BatchNorm2d, InPlaceABN)):
        c = m.weight.shape[0]
        weight = uniform((c,), 0.5, 1.5)
        if isinstance(m, InPlaceABN):
          weight = weight * (torch.randint(0, 2, (c,), generator=generator) * 2 - 1)
        m.weight.copy_(weight)
        m.bias.copy_(torch.randn(c, generator=generator) * 0.1)
    for m in module.modules():
      if isinstance(m, CrissCrossAttention):
        gamma = m._gamma()  # pylint: disable=protected-access
        gamma.copy_(uniform(gamma.shape, 0.5, 1.5))
        # Energies of a few units: attention neither uniform nor one-hot.
        damping = 0.6 / m.query_conv.out_channels
        m.query_conv.weight.mul_(damping)
        m.key_conv.weight.mul_(damping)
    norms = [m for m in module.modules() if isinstance(m, (nn.BatchNorm2d, InPlaceABN))]
    module.eval()
    for m in norms:
      if isinstance(m, InPlaceABN):
        m.calibrate = True
      else:
        m.momentum = None  # Cumulative average: one batch sets the statistics.
        m.reset_running_stats()
        m.train()
    module(torch.randn((2, 3, 64, 64), generator=generator))
    for m in norms:
      m.calibrate = False
      c = m.running_mean.shape[0]
      std = m.running_var.sqrt()
      m.running_mean.add_(torch.randn(c, generator=generator) * 0.2 * std)
      m.running_var.mul_(uniform((c,), 0.7, 1.3)).add_(1e-3)
  return module.eval()


def upsample_aligned(logits, size):
  """Bilinear upsampling as the official criterion does it (align_corners=True)."""
  return F.interpolate(logits, size=size, mode="bilinear", align_corners=True)


def official_ohem_labels(logits, labels, *, thresh, min_kept, factor=8, ignore=255):
  """``OhemCrossEntropy2d.generate_new_target`` of speedinghzl/CCNet: labels with the
  pixels whose target probability exceeds the threshold set to ``ignore``.

  The threshold is found, as upstream, on the probabilities and labels zoomed by
  1/``factor`` (scipy ``zoom``, linear and nearest) with ``min_kept // factor**2``.
  """
  from scipy import ndimage  # pylint: disable=import-outside-toplevel

  prob = F.softmax(logits, 1).detach().numpy()
  target = labels.numpy()
  small_prob = ndimage.zoom(prob, (1.0, 1.0, 1.0 / factor, 1.0 / factor), order=1)
  small_target = ndimage.zoom(target, (1.0, 1.0 / factor, 1.0 / factor), order=0).ravel()
  small_kept = min_kept // (factor * factor)
  valid = small_target != ignore
  if small_kept >= valid.sum():
    threshold = 1.0
  else:
    small_prob = np.moveaxis(small_prob, 1, 0).reshape(small_prob.shape[1], -1)[:, valid]
    pred = small_prob[small_target[valid], np.arange(valid.sum())]
    threshold = thresh
    if small_kept > 0:
      k_th = min(len(pred), small_kept) - 1
      threshold = max(threshold, np.partition(pred, k_th)[k_th])
  flat_target = target.ravel()
  flat_valid = flat_target != ignore
  flat_prob = np.moveaxis(prob, 1, 0).reshape(prob.shape[1], -1)
  pred = flat_prob[np.where(flat_valid, flat_target, 0), np.arange(flat_target.size)]
  kept = flat_valid & (pred <= threshold)
  return torch.from_numpy(np.where(kept, flat_target, ignore).reshape(target.shape)).long()


def official_criterion(main, aux, labels, *, ohem=None, ignore=255):
  """``CriterionDSN`` (or, with ``ohem=(thresh, min_kept)``, ``CriterionOhemDSN``):
  both maps upsampled with align_corners=True, CE (OHEM on the main map) + 0.4 x CE."""
  size = tuple(labels.shape[1:])
  main, aux = upsample_aligned(main, size), upsample_aligned(aux, size)
  main_labels = labels
  if ohem is not None:
    main_labels = official_ohem_labels(
        main, labels, thresh=ohem[0], min_kept=ohem[1], ignore=ignore
    )
  return F.cross_entropy(main, main_labels, ignore_index=ignore) + 0.4 * F.cross_entropy(
      aux, labels, ignore_index=ignore
  )


def resize_align_corners(x, size):
  """NHWC numpy bilinear resize with torch (align_corners=True)."""
  return (
      torch.nn.functional.interpolate(
          torch.from_numpy(np.ascontiguousarray(x)).permute(0, 3, 1, 2),
          size=tuple(size),
          mode="bilinear",
          align_corners=True,
      )
      .permute(0, 2, 3, 1)
      .numpy()
  )


def official_sliding(image, tile_size, network, overlap=1 / 3):
  """predict_sliding of speedinghzl/CCNet evaluate.py, NHWC, per-axis stride; ``network``
  maps a padded tile to logits at its output stride. Computes in the dtype of the network's
  logits."""
  _, height, width, _ = image.shape
  stride_y = math.ceil(tile_size[0] * (1 - overlap))
  stride_x = math.ceil(tile_size[1] * (1 - overlap))
  tile_rows = max(int(math.ceil((height - tile_size[0]) / stride_y) + 1), 1)
  tile_cols = max(int(math.ceil((width - tile_size[1]) / stride_x) + 1), 1)
  full_probs = count = None
  for row in range(tile_rows):
    for col in range(tile_cols):
      x1, y1 = col * stride_x, row * stride_y
      x2, y2 = min(x1 + tile_size[1], width), min(y1 + tile_size[0], height)
      x1, y1 = max(x2 - tile_size[1], 0), max(y2 - tile_size[0], 0)
      img = image[:, y1:y2, x1:x2]
      padded = np.pad(
          img, ((0, 0), (0, tile_size[0] - img.shape[1]), (0, tile_size[1] - img.shape[2]), (0, 0))
      )
      prediction = resize_align_corners(np.asarray(network(padded)), tile_size)
      if full_probs is None:
        full_probs = np.zeros(image.shape[:3] + prediction.shape[-1:], prediction.dtype)
        count = np.zeros(image.shape[:3] + (1,), prediction.dtype)
      full_probs[:, y1:y2, x1:x2] += prediction[:, : img.shape[1], : img.shape[2]]
      count[:, y1:y2, x1:x2] += 1
  return full_probs / count
