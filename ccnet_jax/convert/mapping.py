"""Name and layout mapping from PyTorch state dicts to this project's modules.

Every array of the target module is named ``'backbone/layer3/5/conv2/kernel'``
style (see ``model_dir.model_arrays``). A format is a list of rules turning such a
module path into the PyTorch module name; the leaf decides the PyTorch leaf
name and the layout change (OIHW -> HWIO kernels, InPlaceABN scales). The
conversion consumes the state dict and fails, listing names, if any PyTorch
tensor is left over or any of our arrays has no source.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Mapping

import numpy as np

from ccnet_jax.models import model_dir
from ccnet_jax.models.ccnet import CCNet
from ccnet_jax.models.resnet import ResNet

# inplace_abn's default epsilon, added to |weight| to form the effective scale.
INPLACE_ABN_EPS = 1e-5

Rules = tuple[tuple[str, str], ...]

_LAYERS: Rules = (
    (r"layer(\d)/(\d+)/downsample/conv", r"layer\1.\2.downsample.0"),
    (r"layer(\d)/(\d+)/downsample/bn", r"layer\1.\2.downsample.1"),
    (r"layer(\d)/(\d+)/(conv\d|bn\d)", r"layer\1.\2.\3"),
)
_DEEP_STEM: Rules = ((r"stem/(conv\d|bn\d)", r"\1"),)
_V1C_STEM: Rules = tuple(
    (f"stem/{ours}", f"stem.{theirs}")
    for ours, theirs in zip(("conv1", "bn1", "conv2", "bn2", "conv3", "bn3"), (0, 1, 3, 4, 6, 7))
)

_OFFICIAL_HEAD: Rules = (
    (r"head/conva/conv", "head.conva.0"),
    (r"head/conva/norm", "head.conva.1"),
    (r"head/attention/(query|key|value)", r"head.cca.\1_conv"),
    (r"head/attention", "head.cca"),
    (r"head/convb/conv", "head.convb.0"),
    (r"head/convb/norm", "head.convb.1"),
    (r"head/bottleneck/conv", "head.bottleneck.0"),
    (r"head/bottleneck/norm", "head.bottleneck.1"),
    (r"head/classifier", "head.bottleneck.3"),
    (r"aux_head/conv/conv", "dsn.0"),
    (r"aux_head/conv/norm", "dsn.1"),
    (r"aux_head/classifier", "dsn.3"),
)
_MMSEG_HEAD: Rules = (
    (r"head/conva/conv", "decode_head.convs.0.conv"),
    (r"head/conva/norm", "decode_head.convs.0.bn"),
    (r"head/attention/(query|key|value)", r"decode_head.cca.\1_conv"),
    (r"head/attention", "decode_head.cca"),
    (r"head/convb/conv", "decode_head.convs.1.conv"),
    (r"head/convb/norm", "decode_head.convs.1.bn"),
    (r"head/bottleneck/conv", "decode_head.conv_cat.conv"),
    (r"head/bottleneck/norm", "decode_head.conv_cat.bn"),
    (r"head/classifier", "decode_head.conv_seg"),
    (r"aux_head/conv/conv", "auxiliary_head.convs.0.conv"),
    (r"aux_head/conv/norm", "auxiliary_head.convs.0.bn"),
    (r"aux_head/classifier", "auxiliary_head.conv_seg"),
)


@dataclasses.dataclass(frozen=True)
class Format:
  """How one family of PyTorch checkpoints names and stores a (part of a) CCNet."""

  stem: str  # Our ResNet stem kind.
  backbone_prefix: str  # PyTorch prefix of backbone names ('' or 'backbone.').
  stem_rules: Rules
  head_rules: Rules  # Empty for backbone-only (ImageNet) formats.
  head_prefixes: tuple[str, ...]  # PyTorch names of what is not backbone.
  inplace_abn: bool = False  # Norm weights are InPlaceABN's (scale = |w| + eps).
  # Names of the attention gamma under the attention module, first found wins
  # (newer mmcv stores it as a Scale module, 'gamma.scale'; older as 'gamma').
  gamma_leaves: tuple[str, ...] = ("gamma",)

  @property
  def whole_model(self) -> bool:
    return bool(self.head_rules)


FORMATS: dict[str, Format] = {
    "official": Format("deep", "", _DEEP_STEM, _OFFICIAL_HEAD, ("head.", "dsn."), inplace_abn=True),
    "mmseg": Format(
        "v1c",
        "backbone.",
        _V1C_STEM,
        _MMSEG_HEAD,
        ("decode_head.", "auxiliary_head."),
        gamma_leaves=("gamma.scale", "gamma"),
    ),
    "mit": Format("deep", "", _DEEP_STEM, (), ("fc.",)),
    "torchvision": Format("classic", "", _DEEP_STEM, (), ("fc.",)),
    "v1c": Format("v1c", "", _V1C_STEM, (), ("fc.",)),
}

# Never parameters: BatchNorm's step counter.
_ALWAYS_IGNORED = re.compile(r".*num_batches_tracked$")

_NORM_LEAVES = {"scale": "weight", "mean": "running_mean", "var": "running_var"}


def get_format(name: str) -> Format:
  if name not in FORMATS:
    raise ValueError(f"Unknown checkpoint format {name!r}; use one of {sorted(FORMATS)}.")
  return FORMATS[name]


def strip_prefix(state_dict: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Drops the 'module.' that DataParallel / DistributedDataParallel put on every name."""
  if state_dict and all(k.startswith("module.") for k in state_dict):
    return {k[len("module.") :]: v for k, v in state_dict.items()}
  return dict(state_dict)


def _module_name(path: str, fmt: Format) -> str:
  """Our module path ('backbone/layer1/0/conv1', 'head/conva/norm') -> the PyTorch name."""
  if path.startswith("backbone/"):
    inner = path[len("backbone/") :]
    for pattern, replacement in fmt.stem_rules + _LAYERS:
      if re.fullmatch(pattern, inner):
        return fmt.backbone_prefix + re.sub(pattern, replacement, inner)
  else:
    for pattern, replacement in fmt.head_rules:
      if re.fullmatch(pattern, path):
        return re.sub(pattern, replacement, path)
  raise ValueError(f"No PyTorch name for our module {path!r} in this checkpoint format.")


def _sources(name: str, fmt: Format) -> tuple[tuple[str, ...], str]:
  """Our array name -> (candidate PyTorch names, kind of layout change)."""
  path, leaf = name.rsplit("/", 1)
  module = _module_name(path, fmt)
  if leaf == "kernel":
    return (f"{module}.weight",), "conv"
  if leaf == "gamma":
    return tuple(f"{module}.{g}" for g in fmt.gamma_leaves), "gamma"
  if leaf in _NORM_LEAVES:
    kind = "abn_scale" if leaf == "scale" and fmt.inplace_abn else "copy"
    return (f"{module}.{_NORM_LEAVES[leaf]}",), kind
  if leaf == "bias":
    return (f"{module}.bias",), "copy"
  raise ValueError(f"No PyTorch name for our array {name!r}.")


def _convert(value: np.ndarray, kind: str, name: str, dtype) -> np.ndarray:
  value = np.asarray(value, dtype=dtype)
  if kind == "conv":
    if value.ndim != 4:
      raise ValueError(f"{name} has shape {value.shape}; a convolution weight is 4-D (OIHW).")
    return value.transpose(2, 3, 1, 0)
  if kind == "abn_scale":
    return np.abs(value) + value.dtype.type(INPLACE_ABN_EPS)
  if kind == "gamma":
    return value.reshape(1)
  return value


def convert_arrays(
    state_dict: Mapping[str, np.ndarray],
    module: CCNet | ResNet,
    format: str,  # pylint: disable=redefined-builtin
    *,
    dtype=np.float32,
) -> dict[str, np.ndarray]:
  """The arrays of ``module`` (flat names, our layouts) taken from a PyTorch state dict.

  ``dtype`` is float32 for models and float64 for float64 verification runs.

  A CCNet takes every array from a whole-model format; a ResNet takes the
  backbone of any format (the heads of a whole model and ImageNet classifiers
  are then ignored). Unmatched PyTorch names and arrays without a source raise
  one ValueError listing both.
  """
  fmt = get_format(format)
  state_dict = strip_prefix(state_dict)
  if isinstance(module, CCNet):
    if not fmt.whole_model:
      raise ValueError(
          f"A {format!r} checkpoint holds only a backbone: load it into model.backbone."
      )
    prefix, ignored_prefixes = "", ()
  elif isinstance(module, ResNet):
    prefix, ignored_prefixes = "backbone/", fmt.head_prefixes
  else:
    raise ValueError(f"Cannot load a checkpoint into a {type(module).__name__}.")

  ours = model_dir.flatten(model_dir.model_arrays(module))
  arrays, used, missing = {}, set(), []
  for name in ours:
    candidates, kind = _sources(prefix + name, fmt)
    source = next((c for c in candidates if c in state_dict), None)
    if source is None:
      missing.append(f"{name} <- {' or '.join(candidates)}")
      continue
    arrays[name] = _convert(state_dict[source], kind, source, dtype)
    used.add(source)
  unmatched = sorted(
      k
      for k in state_dict
      if k not in used
      and not _ALWAYS_IGNORED.fullmatch(k)
      and not any(k.startswith(p) for p in ignored_prefixes)
  )
  if missing or unmatched:
    raise ValueError(
        f"The {format!r} checkpoint does not match the model: {len(unmatched)} unmatched"
        f" checkpoint names {unmatched[:30]}{' ...' if len(unmatched) > 30 else ''};"
        f" {len(missing)} missing {missing[:30]}{' ...' if len(missing) > 30 else ''}."
    )
  return arrays


def convert_state(
    state_dict: Mapping[str, np.ndarray],
    module: CCNet | ResNet,
    format: str,  # pylint: disable=redefined-builtin
    *,
    dtype=np.float32,
) -> dict:
  """Like ``convert_arrays`` but nested like ``nnx.state(module, ...).to_pure_dict()``."""
  flat = convert_arrays(state_dict, module, format, dtype=dtype)
  return model_dir.unflatten_like(model_dir.model_arrays(module), flat)


def load_into(
    module: CCNet | ResNet,
    state_dict: Mapping[str, np.ndarray],
    format: str,  # pylint: disable=redefined-builtin
) -> None:
  """Sets every parameter and BatchNorm statistic of ``module`` from a PyTorch state dict."""
  model_dir.assign_arrays(
      module, convert_arrays(state_dict, module, format), source=f"The {format!r} checkpoint"
  )
