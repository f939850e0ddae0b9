"""Flax NNX modules of CCNet and its baselines."""

from ccnet_jax.models.ccnet import CCNet
from ccnet_jax.models.heads import AuxHead, CrissCrossAttention, NonLocalAttention, RCCAHead
from ccnet_jax.models.registry import MODELS, base_model_config, build_model, model_config
from ccnet_jax.models.resnet import ResNet

__all__ = [
    "AuxHead",
    "CCNet",
    "CrissCrossAttention",
    "MODELS",
    "NonLocalAttention",
    "RCCAHead",
    "ResNet",
    "base_model_config",
    "build_model",
    "model_config",
]
