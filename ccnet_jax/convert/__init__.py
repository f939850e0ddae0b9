"""Importers of released PyTorch checkpoints: official and mmseg CCNets, ImageNet ResNets."""

from ccnet_jax.convert.io import read_checkpoint, read_state_dict, read_torch_zip
from ccnet_jax.convert.loaders import (
    BACKBONE_FORMATS,
    backbone_config,
    load_checkpoint,
    mmseg_config,
    official_config,
)
from ccnet_jax.convert.mapping import FORMATS, convert_arrays, convert_state, load_into

__all__ = [
    "BACKBONE_FORMATS",
    "FORMATS",
    "backbone_config",
    "convert_arrays",
    "convert_state",
    "load_checkpoint",
    "load_into",
    "mmseg_config",
    "official_config",
    "read_checkpoint",
    "read_state_dict",
    "read_torch_zip",
]
