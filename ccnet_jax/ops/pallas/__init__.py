"""Fused Pallas kernels (Triton on GPU, Mosaic on TPU, the interpreter on CPU)."""

from __future__ import annotations

from ccnet_jax.ops.pallas.criss_cross import axial_attention_bwd
from ccnet_jax.ops.pallas.criss_cross import axial_attention_fwd
from ccnet_jax.ops.pallas.criss_cross import criss_cross_attention_pallas

__all__ = ["criss_cross_attention_pallas", "axial_attention_fwd", "axial_attention_bwd"]
