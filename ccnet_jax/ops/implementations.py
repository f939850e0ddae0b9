"""The criss-cross attention implementations by name (``model.cca_impl``), and 'auto'."""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from ccnet_jax.ops.criss_cross import criss_cross_attention
from ccnet_jax.ops.criss_cross_matmul import criss_cross_attention_matmul
from ccnet_jax.ops.criss_cross_recompute import criss_cross_attention_recompute
from ccnet_jax.ops.pallas.criss_cross import criss_cross_attention_pallas

CrissCrossFn = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]

_IMPLEMENTATIONS: dict[str, CrissCrossFn] = {
    "einsum": criss_cross_attention,
    "einsum_recompute": criss_cross_attention_recompute,
    "matmul": criss_cross_attention_matmul,
    "pallas": criss_cross_attention_pallas,
}


# What measured fastest for forward+backward at the Cityscapes shape (B=8, 97x97,
# C'=64, C=512; `python benchmarks/cca_kernels.py --size 97 --batch 8 --sweep` on an
# H200, README). Platforms and dtypes not measured keep the einsum.
_FASTEST: dict[tuple[str, str], str] = {("gpu", "bfloat16"): "pallas"}


def fastest_criss_cross(platform: str, dtype) -> str:
  """The implementation 'auto' runs on ``platform`` ('cpu', 'gpu', 'tpu') for ``dtype``."""
  return _FASTEST.get((platform, jnp.dtype(dtype).name), "einsum")


# The lowering platforms of jax.lax.platform_dependent, as fastest_criss_cross names them.
_PLATFORMS = {"cuda": "gpu", "rocm": "gpu", "tpu": "tpu", "default": "cpu"}


def _auto_criss_cross(q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
  """The fastest implementation for the platform the program is lowered for."""
  branches = {
      platform: _IMPLEMENTATIONS[fastest_criss_cross(name, v.dtype)]
      for platform, name in _PLATFORMS.items()
  }
  if len(set(branches.values())) == 1:
    return branches["default"](q, k, v)
  return jax.lax.platform_dependent(q, k, v, **branches)


def criss_cross_implementations() -> tuple[str, ...]:
  """Names accepted by :func:`get_criss_cross` (besides 'auto')."""
  return tuple(sorted(_IMPLEMENTATIONS))


def get_criss_cross(impl: str) -> CrissCrossFn:
  """Returns the criss-cross attention function named by ``model.cca_impl``.

  All implementations share the signature and semantics of
  :func:`criss_cross_attention` (without ``return_attention``). 'auto' chooses
  what measured fastest for the values' dtype and the platform the program is
  lowered for (:func:`fastest_criss_cross`), not the host's.
  """
  if impl == "auto":
    return _auto_criss_cross
  try:
    return _IMPLEMENTATIONS[impl]
  except KeyError:
    raise ValueError(
        f"model.cca_impl={impl!r} is not an implementation of criss-cross"
        f" attention; use one of {criss_cross_implementations() + ('auto',)}."
    ) from None
