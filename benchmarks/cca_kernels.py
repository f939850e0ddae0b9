"""Criss-cross attention implementations: wall time and the memory they add to training.

Compares 'einsum' (the reference), 'einsum_recompute' (weights recomputed in the
backward) and 'pallas' (fused kernels) on one B x S x S map:

* forward and forward+backward wall time of the op, median of --runs after
  warm-up, as ratios to einsum. The Pallas kernels are timed on GPU/TPU only: on
  CPU they run in the Pallas interpreter, which is not a speed measure.
* the memory an RCCA head (R=2, 2048 -> 512 channels) training step needs over
  the same head without attention, from XLA's memory analysis (see
  attention_cost.py), for each implementation and for the non-local block.

  python benchmarks/cca_kernels.py                  # 97 x 97, batch 1
  python benchmarks/cca_kernels.py --size 129 --batch 2 --runs 20
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time
from unittest import mock

import attention_cost  # Before jax (via xla_analysis): configures XLA on CPU.

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from ccnet_jax import ops  # noqa: E402
from ccnet_jax.ops.pallas import criss_cross as pallas_criss_cross  # noqa: E402

IMPLEMENTATIONS = ("einsum", "einsum_recompute", "pallas")


def _timed(fn, args, runs: int, warmup: int) -> float:
  """Median seconds of ``fn(*args)`` over ``runs`` calls after ``warmup`` calls."""
  for _ in range(warmup):
    jax.block_until_ready(fn(*args))
  times = []
  for _ in range(runs):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def op_times(impl: str, args, runs: int, warmup: int) -> tuple[float, float]:
  attend = ops.get_criss_cross(impl)

  def forward(q, k, v):
    return attend(q, k, v)

  def forward_backward(q, k, v, d_out):
    out, vjp = jax.vjp(attend, q, k, v)
    return out, vjp(d_out)

  q, k, v, d_out = args
  return (
      _timed(jax.jit(forward), (q, k, v), runs, warmup),
      _timed(jax.jit(forward_backward), args, runs, warmup),
  )


def timing_table(size: int, batch: int, key_channels: int, channels: int, dtype, runs: int,
                 warmup: int) -> str:
  keys = jax.random.split(jax.random.key(0), 4)
  shape = (batch, size, size)
  args = tuple(
      jax.random.normal(key, shape + (c,), dtype)
      for key, c in zip(keys, (key_channels, key_channels, channels, channels))
  )
  backend = jax.default_backend()
  lines = [
      f"Op wall time on {backend} ({jax.devices()[0].device_kind}): B={batch}, {size}x{size},"
      f" C'={key_channels}, C={channels}, {jnp.dtype(dtype).name}; median of {runs} runs"
      f" after {warmup} warm-up.",
      "",
      "| implementation | forward ms | vs einsum | forward+backward ms | vs einsum |",
      "|---|---:|---:|---:|---:|",
  ]
  reference = None
  for impl in IMPLEMENTATIONS:
    if impl == "pallas" and backend not in ("gpu", "tpu"):
      lines.append("| pallas | - | - | - | - |")
      continue
    forward, both = op_times(impl, args, runs, warmup)
    reference = reference or (forward, both)
    lines.append(
        f"| {impl} | {forward * 1e3:.2f} | {forward / reference[0]:.2f}"
        f" | {both * 1e3:.2f} | {both / reference[1]:.2f} |"
    )
  if backend not in ("gpu", "tpu"):
    lines += [
        "",
        f"pallas: not timed on {backend}: the kernels run in the Pallas interpreter"
        " there, which is not a speed measure.",
    ]
  return "\n".join(lines)


def _opaque_kernel_call(kernel, *args, interpret, out_shape, **pallas_kwargs):
  """Stands in for a pallas_call: an opaque call with the kernel's operands and results.

  On GPU and TPU a kernel keeps its blocks in registers, shared memory or VMEM,
  so XLA's memory analysis of the program around it is its HBM footprint. On
  CPU the interpreter would expand the kernel into an XLA loop with its own
  buffers; this callback (never executed: the program is only compiled) does not.
  """
  del kernel, interpret, pallas_kwargs
  zeros = lambda *_: [np.zeros(s.shape, s.dtype) for s in out_shape]
  return jax.pure_callback(zeros, out_shape, *args)


def memory_increments(size: int, batch: int) -> dict[str, float]:
  """MB that a training step of the RCCA head (R=2) needs over the head without attention.

  Keys: 'non_local', each implementation, and on CPU 'pallas_opaque' and
  'pallas_opaque_padded': the Pallas path with its kernels as opaque calls, in
  the unpadded (TPU) and the power-of-two padded (GPU) layouts.
  """
  baseline = attention_cost.head_cost("none", 0, size, batch, training=True)

  def extra(attention, recurrence, impl="einsum"):
    cost = attention_cost.head_cost(
        attention, recurrence, size, batch, training=True, cca_impl=impl
    )
    return (cost - baseline).memory_mb

  result = {"non_local": extra("non_local", 1)}
  result.update({impl: extra("criss_cross", 2, impl) for impl in IMPLEMENTATIONS})
  if jax.default_backend() not in ("gpu", "tpu"):
    with mock.patch.object(pallas_criss_cross, "_call", _opaque_kernel_call):
      result["pallas_opaque"] = extra("criss_cross", 2, "pallas")
      padded = functools.partial(
          pallas_criss_cross.criss_cross_attention_pallas, pad_to_power_of_two=True
      )
      with mock.patch.dict(ops._IMPLEMENTATIONS, {"pallas": padded}):
        result["pallas_opaque_padded"] = extra("criss_cross", 2, "pallas")
  return result


_LABELS = {
    "non_local": "non-local",
    "einsum": "criss-cross R=2, einsum",
    "einsum_recompute": "criss-cross R=2, einsum_recompute",
    "pallas": "criss-cross R=2, pallas",
    "pallas_opaque": "criss-cross R=2, pallas, kernels opaque (HBM outside them), TPU layout",
    "pallas_opaque_padded": (
        "criss-cross R=2, pallas, kernels opaque (HBM outside them), GPU padded layout"
    ),
}


def memory_table(size: int, batch: int) -> str:
  backend = jax.default_backend()
  increments = memory_increments(size, batch)
  non_local = increments["non_local"]
  lines = [
      f"Training-step memory over the head without attention: RCCA head R=2,"
      f" {attention_cost.IN_FEATURES} -> 512 channels, {size}x{size}, batch {batch},"
      f" {backend} XLA memory analysis.",
      "",
      "| attention | extra memory MB | non-local / this |",
      "|---|---:|---:|",
  ]
  for name, mb in increments.items():
    label = _LABELS[name]
    if name == "pallas" and backend not in ("gpu", "tpu"):
      label += " (interpreter: its grid loop and buffers)"
    lines.append(f"| {label} | {mb:.0f} | {non_local / mb:.1f} |")
  return "\n".join(lines)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--size", type=int, default=97, help="feature map height and width")
  parser.add_argument("--batch", type=int, default=1)
  parser.add_argument("--key-channels", type=int, default=64)
  parser.add_argument("--channels", type=int, default=512)
  parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
  parser.add_argument("--runs", type=int, default=10)
  parser.add_argument("--warmup", type=int, default=2)
  parser.add_argument("--skip-memory", action="store_true")
  args = parser.parse_args()
  if args.size < 1 or args.batch < 1 or args.runs < 1:
    raise ValueError("--size, --batch and --runs must be positive.")
  print(timing_table(args.size, args.batch, args.key_channels, args.channels,
                     jnp.dtype(args.dtype), args.runs, args.warmup))
  if not args.skip_memory:
    print()
    print(memory_table(args.size, args.batch))


if __name__ == "__main__":
  main()
