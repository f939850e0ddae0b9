"""Fused Pallas kernels (Triton on GPU, Mosaic on TPU, the interpreter on CPU)."""

from __future__ import annotations

from ccnet_jax.ops.pallas.criss_cross import (
    TUNING_GRID,
    BlockSizes,
    criss_cross_attention_pallas,
    tuning_configurations,
)

__all__ = ["BlockSizes", "TUNING_GRID", "criss_cross_attention_pallas", "tuning_configurations"]
