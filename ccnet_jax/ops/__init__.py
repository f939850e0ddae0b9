"""Parameter-free attention operators and the choice between their implementations."""

from __future__ import annotations

from typing import Callable

import jax

from ccnet_jax.ops.criss_cross import criss_cross_attention
from ccnet_jax.ops.criss_cross_recompute import criss_cross_attention_recompute
from ccnet_jax.ops.non_local import non_local_attention
from ccnet_jax.ops.pallas import criss_cross_attention_pallas

CrissCrossFn = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]

_IMPLEMENTATIONS: dict[str, CrissCrossFn] = {
    "einsum": criss_cross_attention,
    "einsum_recompute": criss_cross_attention_recompute,
    "pallas": criss_cross_attention_pallas,
}


def criss_cross_implementations() -> tuple[str, ...]:
  """Names accepted by :func:`get_criss_cross` (besides 'auto')."""
  return tuple(sorted(_IMPLEMENTATIONS))


def get_criss_cross(impl: str) -> CrissCrossFn:
  """Returns the criss-cross attention function named by ``model.cca_impl``.

  All implementations share the signature and semantics of
  :func:`criss_cross_attention` (without ``return_attention``). 'auto' picks the
  fused kernel on GPU and TPU when it is available, the einsum version elsewhere.
  """
  if impl == "auto":
    platform = jax.default_backend()
    impl = "pallas" if platform in ("gpu", "tpu") and "pallas" in _IMPLEMENTATIONS else "einsum"
  try:
    return _IMPLEMENTATIONS[impl]
  except KeyError:
    raise ValueError(
        f"model.cca_impl={impl!r} is not an implementation of criss-cross"
        f" attention; use one of {criss_cross_implementations() + ('auto',)}."
    ) from None


__all__ = [
    "criss_cross_attention",
    "criss_cross_attention_recompute",
    "criss_cross_attention_pallas",
    "non_local_attention",
    "get_criss_cross",
    "criss_cross_implementations",
]
