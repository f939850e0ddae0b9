"""Criss-cross attention implementations: wall time and the memory they add to training.

Compares 'einsum' (the reference), 'einsum_recompute' (weights recomputed in the
backward) and 'pallas' (fused kernels) on one B x S x S map:

* forward and forward+backward wall time of the op, median of --runs after
  warm-up, as ratios to einsum. The Pallas kernels are timed on GPU/TPU only: on
  CPU they run in the Pallas interpreter, which is not a speed measure.
* the memory an RCCA head (R=2, 2048 -> 512 channels) training step needs over
  the same head without attention, from XLA's memory analysis (see
  attention_cost.py), for each implementation and for the non-local block.

* with --sweep, the Pallas kernels' tunables (ccnet_jax.ops.pallas.BlockSizes)
  over ccnet_jax.ops.pallas.TUNING_GRID, float32 and bfloat16, each configuration's forward and
  forward+backward time as a ratio to the einsum measured in the same run, and
  its largest deviation from the einsum's output and gradients. A configuration
  that fails to compile or run is a row "failed: <reason>" and the sweep goes
  on. --json PATH appends each row to PATH as one JSON line as soon as it is
  measured. On CPU the kernels run untimed in the interpreter (in the padded
  GPU layout), which checks every configuration end to end.

  python benchmarks/cca_kernels.py                  # 97 x 97, batch 1
  python benchmarks/cca_kernels.py --size 129 --batch 2 --runs 20
  python benchmarks/cca_kernels.py --size 97 --batch 8 --sweep --json sweep.jsonl
  python benchmarks/cca_kernels.py --size 97 --batch 8 --block-sizes query_block=32,num_warps=4
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import statistics
import time
from unittest import mock

import attention_cost  # Before jax (via xla_analysis): configures XLA on CPU.

# isort: split

import jax
import jax.numpy as jnp
import numpy as np

from ccnet_jax import ops
from ccnet_jax.cli import run_user_command
from ccnet_jax.ops import implementations
from ccnet_jax.ops.pallas import BlockSizes, tuning_configurations
from ccnet_jax.ops.pallas import criss_cross as pallas_criss_cross

IMPLEMENTATIONS = ("einsum", "einsum_recompute", "pallas")


def parse_block_sizes(text: str) -> BlockSizes:
  """'query_block=32,num_warps=4' -> BlockSizes; fields left out keep their defaults."""
  fields = {f.name for f in dataclasses.fields(BlockSizes)}
  values = {}
  for item in filter(None, text.split(",")):
    name, _, value = item.partition("=")
    if name.strip() not in fields or not value.strip().isdigit():
      raise ValueError(
          f"--block-sizes: {item!r} is not NAME=INTEGER with NAME one of {sorted(fields)};"
          " e.g. --block-sizes query_block=32,num_warps=4."
      )
    values[name.strip()] = int(value)
  return BlockSizes(**values)


def _pallas(block_sizes: BlockSizes, pad_to_power_of_two: bool | None = None):
  return functools.partial(
      ops.criss_cross_attention_pallas,
      block_sizes=block_sizes,
      pad_to_power_of_two=pad_to_power_of_two,
  )


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


def _programs(attend):
  """The jitted forward and forward+backward of a criss-cross function."""

  def forward(q, k, v):
    return attend(q, k, v)

  def forward_backward(q, k, v, d_out):
    out, vjp = jax.vjp(attend, q, k, v)
    return (out,) + vjp(d_out)

  return jax.jit(forward), jax.jit(forward_backward)


def op_times(attend, args, runs: int, warmup: int) -> tuple[float, float]:
  forward, forward_backward = _programs(attend)
  return (
      _timed(forward, args[:3], runs, warmup),
      _timed(forward_backward, args, runs, warmup),
  )


def _inputs(size: int, batch: int, key_channels: int, channels: int, dtype):
  keys = jax.random.split(jax.random.key(0), 4)
  shape = (batch, size, size)
  return tuple(
      jax.random.normal(key, shape + (c,), dtype)
      for key, c in zip(keys, (key_channels, key_channels, channels, channels))
  )


def _accelerated() -> bool:
  return jax.default_backend() in ("gpu", "tpu")


def _setting(size, batch, key_channels, channels, dtype, runs, warmup) -> str:
  return (
      f"{jax.default_backend()} ({jax.devices()[0].device_kind}), jax {jax.__version__}:"
      f" B={batch}, {size}x{size}, C'={key_channels}, C={channels}, {jnp.dtype(dtype).name};"
      f" median of {runs} runs after {warmup} warm-up"
  )


def timing_table(
    size: int,
    batch: int,
    key_channels: int,
    channels: int,
    dtype,
    runs: int,
    warmup: int,
    block_sizes: BlockSizes = BlockSizes(),
) -> str:
  args = _inputs(size, batch, key_channels, channels, dtype)
  backend = jax.default_backend()
  lines = [
      "Op wall time on "
      + _setting(size, batch, key_channels, channels, dtype, runs, warmup)
      + f"; pallas with {block_sizes}.",
      "",
      "| implementation | forward ms | vs einsum | forward+backward ms | vs einsum |",
      "|---|---:|---:|---:|---:|",
  ]
  reference = None
  for impl in IMPLEMENTATIONS:
    if impl == "pallas" and not _accelerated():
      lines.append("| pallas | - | - | - | - |")
      continue
    attend = _pallas(block_sizes) if impl == "pallas" else ops.get_criss_cross(impl)
    forward, both = op_times(attend, args, runs, warmup)
    reference = reference or (forward, both)
    lines.append(
        f"| {impl} | {forward * 1e3:.2f} | {forward / reference[0]:.2f}"
        f" | {both * 1e3:.2f} | {both / reference[1]:.2f} |"
    )
  if not _accelerated():
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
  the unpadded TPU layout (the column branch on transposed copies) and the GPU
  layout (power-of-two blocks read in place, edges masked).
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
      with mock.patch.dict(implementations._IMPLEMENTATIONS, {"pallas": padded}):
        result["pallas_opaque_padded"] = extra("criss_cross", 2, "pallas")
  return result


_LABELS = {
    "non_local": "non-local",
    "einsum": "criss-cross R=2, einsum",
    "einsum_recompute": "criss-cross R=2, einsum_recompute",
    "pallas": "criss-cross R=2, pallas",
    "pallas_opaque": (
        "criss-cross R=2, pallas, kernels opaque (HBM outside them), TPU layout (column copies)"
    ),
    "pallas_opaque_padded": (
        "criss-cross R=2, pallas, kernels opaque (HBM outside them), GPU layout (in place)"
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


def _max_deviation(got, expected) -> float:
  """Largest |got - expected| over the output and gradients, each relative to its largest entry."""
  deviations = []
  for g, e in zip(got, expected):
    g, e = np.asarray(g, np.float32), np.asarray(e, np.float32)
    deviations.append(float(np.abs(g - e).max() / max(float(np.abs(e).max()), 1e-30)))
  return max(deviations)


def _one_line(error: Exception) -> str:
  text = f"{type(error).__name__}: {error}".strip()
  return text.splitlines()[0][:200]


def _measure(attend, args, expected, runs: int, warmup: int) -> dict:
  """Deviation from `expected` and, on an accelerator, forward and forward+backward ms."""
  forward, forward_backward = _programs(attend)
  row = {"max_deviation": _max_deviation(forward_backward(*args), expected)}
  if _accelerated():
    row["forward_ms"] = _timed(forward, args[:3], runs, warmup) * 1e3
    row["forward_backward_ms"] = _timed(forward_backward, args, runs, warmup) * 1e3
  return row


def sweep_rows(size, batch, key_channels, channels, dtype, runs, warmup, configurations):
  """One dict per implementation: the einsum first, then each Pallas configuration.

  On CPU the kernels run untimed in the interpreter, in the padded layout that
  Triton uses on GPU.
  """
  args = _inputs(size, batch, key_channels, channels, dtype)
  setting = {
      "device": jax.devices()[0].device_kind,
      "jax": jax.__version__,
      "size": size,
      "batch": batch,
      "key_channels": key_channels,
      "channels": channels,
      "dtype": jnp.dtype(dtype).name,
  }
  expected = _programs(ops.criss_cross_attention)[1](*args)
  yield {
      **setting,
      "implementation": "einsum",
      **_measure(ops.criss_cross_attention, args, expected, runs, warmup),
  }
  pad = None if _accelerated() else True
  for block_sizes in configurations:
    row = {**setting, "implementation": "pallas", **dataclasses.asdict(block_sizes)}
    try:
      row.update(_measure(_pallas(block_sizes, pad), args, expected, runs, warmup))
    except Exception as error:  # noqa: BLE001 -- a configuration that fails is a result.
      row["failed"] = _one_line(error)
    yield row


_SWEEP_HEADER = (
    "| query_block | channel_slice | num_warps | num_stages | forward ms | x einsum"
    " | forward+backward ms | x einsum | max deviation |"
)


def _sweep_line(row: dict, reference: dict) -> str:
  if row["implementation"] == "einsum":
    tunables = "einsum | - | - | -"
  else:
    tunables = " | ".join(str(row[f.name]) for f in dataclasses.fields(BlockSizes))
  if "failed" in row:
    return f"| {tunables} | failed: {row['failed'].replace('|', '/')} | | | | |"
  times = ""
  for key in ("forward_ms", "forward_backward_ms"):
    if key in row:
      times += f" | {row[key]:.3f} | {row[key] / reference[key]:.2f}"
    else:
      times += " | - | -"
  return f"| {tunables}{times} | {row['max_deviation']:.1e} |"


def sweep_table(
    size,
    batch,
    key_channels,
    channels,
    dtype,
    runs,
    warmup,
    configurations,
    json_path: str | None = None,
) -> str:
  """The sweep as markdown, printed row by row; rows also appended to json_path."""
  lines = [
      "Pallas tunables on "
      + _setting(size, batch, key_channels, channels, dtype, runs, warmup)
      + ". 'x einsum': time over the einsum's in this run; 'max deviation': largest"
      " difference from the einsum's output and gradients, relative to the largest entry.",
      "",
      _SWEEP_HEADER,
      "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
  ]
  print("\n".join(lines), flush=True)
  reference = None
  for row in sweep_rows(size, batch, key_channels, channels, dtype, runs, warmup, configurations):
    reference = reference or row
    lines.append(_sweep_line(row, reference))
    print(lines[-1], flush=True)
    if json_path:
      with open(json_path, "a") as file:
        file.write(json.dumps(row) + "\n")
  if not _accelerated():
    lines += [
        "",
        f"Not timed on {jax.default_backend()}: the kernels ran in the Pallas" " interpreter.",
    ]
    print("\n".join(lines[-2:]), flush=True)
  return "\n".join(lines)


def _parse_args():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--size", type=int, default=97, help="feature map height and width")
  parser.add_argument("--batch", type=int, default=1)
  parser.add_argument("--key-channels", type=int, default=64)
  parser.add_argument("--channels", type=int, default=512)
  parser.add_argument(
      "--dtype",
      default=None,
      choices=("float32", "bfloat16"),
      help="default: float32, and both with --sweep",
  )
  parser.add_argument("--runs", type=int, default=10)
  parser.add_argument("--warmup", type=int, default=2)
  parser.add_argument("--skip-memory", action="store_true")
  parser.add_argument(
      "--sweep",
      action="store_true",
      help="time the Pallas kernels for every configuration of TUNING_GRID",
  )
  parser.add_argument(
      "--block-sizes",
      default="",
      metavar="NAME=N,...",
      help="one Pallas configuration (BlockSizes fields) for the table, or the"
      " only one the sweep runs",
  )
  parser.add_argument("--json", metavar="PATH", help="with --sweep: append each row to PATH")
  return parser.parse_args()


def run(args) -> None:
  if args.size < 1 or args.batch < 1 or args.runs < 1:
    raise ValueError("--size, --batch and --runs must be positive.")
  if args.json and not args.sweep:
    raise ValueError("--json writes the rows of --sweep; add --sweep.")
  block_sizes = parse_block_sizes(args.block_sizes)
  shape = (args.size, args.batch, args.key_channels, args.channels)
  if args.sweep:
    configurations = [block_sizes] if args.block_sizes else tuning_configurations()
    for dtype in [args.dtype] if args.dtype else ["float32", "bfloat16"]:
      sweep_table(*shape, jnp.dtype(dtype), args.runs, args.warmup, configurations, args.json)
      print()
    return
  print(
      timing_table(*shape, jnp.dtype(args.dtype or "float32"), args.runs, args.warmup, block_sizes)
  )
  if not args.skip_memory:
    print()
    print(memory_table(args.size, args.batch))


def main():
  args = _parse_args()
  run_user_command(lambda: run(args))


if __name__ == "__main__":
  main()
