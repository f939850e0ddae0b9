"""Released PyTorch CCNets and ImageNet ResNets as this project's models.

Each loader reads the architecture off the checkpoint (depth from the block
counts, widths and classes from weight shapes), builds the matching model
config, and fills the model through ``mapping.load_into``. The same configs and
the input preprocessing each release expects are what the CLI exports.
"""

from __future__ import annotations

import re
from typing import Any, Mapping

import ml_collections
import numpy as np
from flax import nnx

from ccnet_jax.convert import mapping
from ccnet_jax.models import model_dir
from ccnet_jax.models.preprocessing import IMAGENET, OFFICIAL, Preprocessing
from ccnet_jax.models.registry import construct_model, model_config
from ccnet_jax.models.resnet import DEPTHS, ResNet

BACKBONE_FORMATS = ("mit", "torchvision", "v1c")


def _shape(state_dict: Mapping[str, np.ndarray], name: str) -> tuple[int, ...]:
  if name not in state_dict:
    raise ValueError(f"The checkpoint has no {name!r}; is it the right format?")
  return tuple(np.shape(state_dict[name]))


def infer_depth(state_dict: Mapping[str, np.ndarray], prefix: str = "") -> int:
  """ResNet depth from the number of blocks in each stage and the block type."""
  counts = [0, 0, 0, 0]
  pattern = re.compile(re.escape(prefix) + r"layer([1-4])\.(\d+)\.")
  for key in state_dict:
    match = pattern.match(key)
    if match:
      stage, block = int(match.group(1)) - 1, int(match.group(2))
      counts[stage] = max(counts[stage], block + 1)
  kind = "bottleneck" if f"{prefix}layer1.0.conv3.weight" in state_dict else "basic"
  for depth, (block_kind, sizes) in DEPTHS.items():
    if block_kind == kind and tuple(sizes) == tuple(counts):
      return depth
  raise ValueError(f"Blocks per stage {counts} ({kind}) match no ResNet depth in {sorted(DEPTHS)}.")


def _backbone_fields(state_dict, prefix: str, depth: int | None) -> dict[str, Any]:
  inferred = infer_depth(state_dict, prefix)
  if depth is not None and depth != inferred:
    raise ValueError(f"depth={depth} but the checkpoint is a ResNet-{inferred}; pass depth=None.")
  return {
      "depth": inferred,
      "base_width": _shape(state_dict, f"{prefix}layer1.0.conv1.weight")[0],
  }


def _check_classes(num_classes: int | None, found: int, argument: str) -> int:
  if num_classes is not None and num_classes != found:
    raise ValueError(
        f"{argument}={num_classes} but the checkpoint's classifier has {found} classes;"
        f" pass {argument}={found}."
    )
  return found


def _head_fields(state_dict, fmt: str) -> tuple[dict[str, Any], dict[str, Any], int]:
  """(head fields, aux fields, num_classes) read off the head weight shapes."""
  if fmt == "official":
    conva, bottleneck, classifier = "head.conva.0", "head.bottleneck.0", "head.bottleneck.3"
    aux_conv = "dsn.0"
  else:
    conva, bottleneck = "decode_head.convs.0.conv", "decode_head.conv_cat.conv"
    classifier, aux_conv = "decode_head.conv_seg", "auxiliary_head.convs.0.conv"
  head = {
      "channels": _shape(state_dict, f"{conva}.weight")[0],
      "out_channels": _shape(state_dict, f"{bottleneck}.weight")[0],
  }
  if f"{aux_conv}.weight" in state_dict:
    aux = {
        "enabled": True,
        "channels": _shape(state_dict, f"{aux_conv}.weight")[0],
        "use_bias": f"{aux_conv}.bias" in state_dict,
    }
  else:
    aux = {"enabled": False}
  return head, aux, _shape(state_dict, f"{classifier}.weight")[0]


def official_config(
    state_dict: Mapping[str, np.ndarray], *, num_classes: int | None = None, recurrence: int = 2
) -> ml_collections.ConfigDict:
  """The model config of an official CCNet checkpoint (speedinghzl/CCNet)."""
  state_dict = mapping.strip_prefix(state_dict)
  backbone = _backbone_fields(state_dict, "", None)
  return _ccnet_config(
      "ccnet_r101_official",
      f"ccnet_r{backbone['depth']}_official",
      backbone,
      _head_fields(state_dict, "official"),
      num_classes=num_classes,
      recurrence=recurrence,
  )


def _ccnet_config(
    preset: str, name: str, backbone: dict, heads: tuple, *, num_classes, recurrence: int
) -> ml_collections.ConfigDict:
  """``preset`` with the fields read off a checkpoint (backbone, then head, aux, classes)."""
  head, aux, found = heads
  config = model_config(preset)
  config.name = name
  config.num_classes = _check_classes(num_classes, found, "num_classes")
  config.backbone.update(backbone)
  config.head.update(head, recurrence=recurrence)
  config.aux.update(aux)
  return config


def _meta_recurrence(meta: Mapping[str, Any] | None) -> int | None:
  """R from the config text mmseg stores in checkpoint['meta']['config'], if any."""
  text = (meta or {}).get("config")
  if isinstance(text, str):
    match = re.search(r"recurrence\s*=\s*(\d+)", text)
    if match:
      return int(match.group(1))
  return None


def _unwrap(checkpoint: Mapping[str, Any]) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
  """(state dict, meta) of either a bare state dict or {'state_dict': ..., 'meta': ...}."""
  if isinstance(checkpoint.get("state_dict"), Mapping):
    meta = checkpoint.get("meta")
    return dict(checkpoint["state_dict"]), dict(meta) if isinstance(meta, Mapping) else {}
  return dict(checkpoint), {}


def mmseg_config(
    checkpoint: Mapping[str, Any],
    *,
    depth: int | None = None,
    num_classes: int | None = None,
    recurrence: int | None = None,
    meta: Mapping[str, Any] | None = None,
) -> ml_collections.ConfigDict:
  """The model config of an mmsegmentation CCNet checkpoint (ResNetV1c-D8 + CCHead).

  R comes from ``recurrence``, else from the config text in the checkpoint's
  meta, else mmseg's default (2).
  """
  state_dict, found_meta = _unwrap(checkpoint)
  state_dict = mapping.strip_prefix(state_dict)
  backbone = _backbone_fields(state_dict, "backbone.", depth)
  if recurrence is None:
    recurrence = _meta_recurrence(meta or found_meta) or 2
  return _ccnet_config(
      "ccnet_r101_d8_mmseg",
      f"ccnet_r{backbone['depth']}_d8_mmseg",
      backbone,
      _head_fields(state_dict, "mmseg"),
      num_classes=num_classes,
      recurrence=recurrence,
  )


def backbone_config(
    state_dict: Mapping[str, np.ndarray],
    format: str,  # pylint: disable=redefined-builtin
    *,
    depth: int | None = None,
) -> ml_collections.ConfigDict:
  """A CCNet config whose backbone fits an ImageNet ResNet checkpoint.

  'mit' (the deep-stem ResNets the official CCNet starts from) gives the
  official network; 'v1c' (mmcv) the mmseg network; 'torchvision' the official
  network with the 7x7 stem.
  """
  if format not in BACKBONE_FORMATS:
    raise ValueError(f"format={format!r} is not one of {BACKBONE_FORMATS}.")
  state_dict = mapping.strip_prefix(state_dict)
  backbone = _backbone_fields(state_dict, "", depth)
  if format == "v1c":
    config = model_config("ccnet_r101_d8_mmseg")
    config.name = f"ccnet_r{backbone['depth']}_d8_mmseg"
  else:
    config = model_config("ccnet_r101_official")
    config.name = f"ccnet_r{backbone['depth']}_official"
  config.backbone.update(backbone, stem=mapping.get_format(format).stem)
  return config


def load_checkpoint(
    format: str,  # pylint: disable=redefined-builtin
    checkpoint: Mapping[str, Any],
    *,
    meta: Mapping[str, Any] | None = None,
    num_classes: int | None = None,
    recurrence: int | None = None,
    depth: int | None = None,
    output_stride: int | None = None,
) -> tuple[nnx.Module, ml_collections.ConfigDict, Preprocessing]:
  """Any supported checkpoint as (module in eval mode, its model config, its preprocessing).

  'official' and 'mmseg' give a whole CCNet (R from ``recurrence``, else the checkpoint's
  meta, else 2); the ImageNet formats give the dilated ResNet backbone alone, at
  ``output_stride`` (default the config's, 8).
  """
  state_dict, found_meta = _unwrap(checkpoint)
  if format == "official":
    config = official_config(
        state_dict, num_classes=num_classes, recurrence=2 if recurrence is None else recurrence
    )
    if depth is not None and depth != config.backbone.depth:
      raise ValueError(f"--depth={depth} but the checkpoint is a ResNet-{config.backbone.depth}.")
    build, preprocessing = (lambda: construct_model(config)), OFFICIAL
  elif format == "mmseg":
    config = mmseg_config(
        state_dict,
        depth=depth,
        num_classes=num_classes,
        recurrence=recurrence,
        meta=meta or found_meta,
    )
    build, preprocessing = (lambda: construct_model(config)), IMAGENET
  else:
    if num_classes is not None or recurrence is not None:
      raise ValueError(
          f"--num_classes and --recurrence do not apply to the backbone-only {format!r} format."
      )
    config = backbone_config(state_dict, format, depth=depth)
    if output_stride is not None:
      config.backbone.output_stride = output_stride
    build = lambda: ResNet(**config.backbone.to_dict(), rngs=nnx.Rngs(0))  # noqa: E731
    preprocessing = IMAGENET
  model = model_dir.empty_module(build)
  mapping.load_into(model, state_dict, format)
  model.eval()
  return model, config, preprocessing
