"""Tolerances for float32 results, derived from a float64 truth.

A float32 result is never compared with a fixed atol: float32 rounding depends on the
summation order, which moves with the CPU's vector width, XLA's flags and the thread count.
Instead it is compared with the float64 truth and allowed ``factor`` times the error that an
independent float32 evaluation of the same quantity makes on the same machine (the
reference's own float32 run: the einsum, the numpy loops or PyTorch in float32). The
tolerance then scales with the problem and the rounding, and a bug (a wrong mask, branch or
gradient) errs by a fraction of the values themselves, orders of magnitude above it.

Errors are 2-norms per array (statistically stable over many entries, unlike a single
worst entry), with a floor: one float32 rounding of the truth (2^-24 of its norm), which
no float32 result can be asked to beat. Two kinds of array are held to the budget of the
whole tree (the root-sum-square of the reference's errors) instead of their own: one
whose true value is zero at float32 resolution (a gradient that vanishes by symmetry)
has no relative error, and one of fewer than MIN_SIZE entries (a loss, a bias) is too
small for its error to be a statistic: the reference may be exact on it by chance.

A test's factor is a power of two, at least 4 and at least twice the worst ratio measured
(its comment gives it) under each XLA configuration the test runs in: default flags, and
for the tests marked ``numeric`` also the second run of README's test command (fast math
on SSE4.2 vectors).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

# float32's unit roundoff: one rounding moves a value by at most this fraction of it.
UNIT_ROUNDOFF = 2.0**-24
# Two error norms over n entries with the same spread scatter like the square root of an
# F(n, n) variable: from 16 entries on, their ratio exceeds 2.3 once in a thousand
# (1 entry: 640).
MIN_SIZE = 16


def softmax_sum_tolerance(entries: int) -> float:
  """How far float32 softmax weights over ``entries`` entries may sum from 1.

  The denominator's entries - 1 roundings, each weight's division (under fast math a
  reciprocal and a product: 2) and the final sum's entries - 1 roundings, each at most
  2^-24 of 1 (Higham, Accuracy and Stability of Numerical Algorithms, 4.2).
  """
  return 2 * entries * UNIT_ROUNDOFF


def in_float64(tree):
  """The floating arrays of ``tree`` as float64 JAX arrays (call inside ``jax.enable_x64``)."""
  return jax.tree.map(
      lambda a: jnp.asarray(a, jnp.float64) if jnp.issubdtype(a.dtype, jnp.floating) else a, tree
  )


def _float64_leaves(tree):
  return [
      (jax.tree_util.keystr(path), np.asarray(leaf, np.float64))
      for path, leaf in jax.tree_util.tree_leaves_with_path(tree)
  ]


def error_ratios(got, reference, truth) -> dict[str, float]:
  """Per array: ||got - truth|| / max(||reference - truth||, 2^-24 ||truth||).

  The key ``"<tree>"`` holds the same ratio over all arrays together. Arrays whose truth
  is below the tree's budget (zero at float32 resolution) or with fewer than MIN_SIZE
  entries are left out of the per-array ratios and measured by the tree's.
  """
  got, reference, truth = _float64_leaves(got), _float64_leaves(reference), _float64_leaves(truth)
  if not [name for name, _ in got] == [name for name, _ in reference] == [n for n, _ in truth]:
    raise ValueError("got, reference and truth must have the same structure")
  errors, budgets, own = {}, {}, {}
  for (name, g), (_, r), (_, t) in zip(got, reference, truth):
    if not g.shape == r.shape == t.shape:
      raise ValueError(f"{name}: shapes {g.shape}, {r.shape}, {t.shape} differ")
    errors[name] = np.linalg.norm(g - t)
    budgets[name] = max(np.linalg.norm(r - t), UNIT_ROUNDOFF * np.linalg.norm(t))
    own[name] = (np.linalg.norm(t), t.size)
  tree_budget = np.sqrt(sum(b**2 for b in budgets.values()))
  ratios = {"<tree>": _ratio(np.sqrt(sum(e**2 for e in errors.values())), tree_budget)}
  for name, (norm, size) in own.items():
    if norm > tree_budget and size >= MIN_SIZE:
      ratios[name] = _ratio(errors[name], budgets[name])
  return ratios


def _ratio(error, budget):
  if budget == 0:
    return 0.0 if error == 0 else float("inf")
  return float(error / budget)


def assert_as_accurate_as(got, reference, truth, *, factor: float, err_msg: str = ""):
  """Each array of ``got`` within ``factor`` x the float32 ``reference``'s error.

  ``got``, ``reference`` and ``truth`` are pytrees of the same structure (or arrays);
  ``truth`` is the float64 evaluation, ``reference`` an independent float32 one.
  """
  ratios = error_ratios(got, reference, truth)
  worst = max(ratios, key=ratios.get)
  assert ratios[worst] <= factor, (
      f"{err_msg}: {worst} is {ratios[worst]:.3g}x as far from the float64 truth as the"
      f" float32 reference (allowed {factor}x); all: "
      + ", ".join(f"{k} {v:.2g}" for k, v in ratios.items())
  )


def decided_pixels(logits, error: float, *, factor: float) -> np.ndarray:
  """Where no other float32 evaluation as accurate as ``logits`` can choose another label.

  ``logits`` are (..., classes), ``error`` their largest deviation from the float64 truth.
  Another evaluation within ``factor`` x ``error`` of the truth is within (factor + 1) x
  ``error`` of ``logits``, so its argmax equals theirs wherever their two best classes are
  more than twice that apart.
  """
  top_two = np.sort(np.asarray(logits, np.float64), axis=-1)[..., -2:]
  return top_two[..., 1] - top_two[..., 0] > 2 * (factor + 1) * error
