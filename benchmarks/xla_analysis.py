"""FLOPs and memory of a compiled program, from XLA's cost and memory analyses.

Import this module before jax: on CPU it turns off XLA's YNNPACK fusions, which
allocate their scratch memory outside XLA's buffer assignment and would make
``memory_analysis()`` report a fraction of the real working set (a 9409 x 9409
attention matrix vanishes from it). With them off, every intermediate buffer is
accounted for, as on GPU and TPU.
"""

from __future__ import annotations

import dataclasses
import os

_FLAG = "--xla_cpu_experimental_ynn_fusion_type="
if _FLAG not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _FLAG).strip()

import jax  # noqa: E402  (after the flag)


@dataclasses.dataclass(frozen=True)
class Cost:
  gflops: float
  memory_mb: float  # arguments + outputs + temporaries - aliased: the program's footprint.

  def __sub__(self, other: "Cost") -> "Cost":
    return Cost(self.gflops - other.gflops, self.memory_mb - other.memory_mb)


def program_cost(fn, *args) -> Cost:
  """Compiles ``jax.jit(fn)`` for ``args`` (arrays or ShapeDtypeStructs) without running it."""
  compiled = jax.jit(fn).lower(*args).compile()
  costs = compiled.cost_analysis()
  if isinstance(costs, (list, tuple)):  # Older jax returns one dict per computation.
    costs = costs[0]
  memory = compiled.memory_analysis()
  total = (
      memory.argument_size_in_bytes
      + memory.output_size_in_bytes
      + memory.temp_size_in_bytes
      - memory.alias_size_in_bytes
  )
  return Cost(gflops=costs["flops"] / 1e9, memory_mb=total / 2**20)
