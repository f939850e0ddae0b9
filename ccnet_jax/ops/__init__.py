"""Parameter-free attention operators and the choice between their implementations."""

from ccnet_jax.ops.criss_cross import criss_cross_attention
from ccnet_jax.ops.criss_cross_matmul import criss_cross_attention_matmul
from ccnet_jax.ops.criss_cross_recompute import criss_cross_attention_recompute
from ccnet_jax.ops.implementations import (
    criss_cross_implementations,
    fastest_criss_cross,
    get_criss_cross,
)
from ccnet_jax.ops.non_local import non_local_attention
from ccnet_jax.ops.pallas.criss_cross import criss_cross_attention_pallas

__all__ = [
    "criss_cross_attention",
    "criss_cross_attention_recompute",
    "criss_cross_attention_matmul",
    "criss_cross_attention_pallas",
    "non_local_attention",
    "get_criss_cross",
    "criss_cross_implementations",
    "fastest_criss_cross",
]
