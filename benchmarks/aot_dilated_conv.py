"""What each form of dilated convolution compiles to on a TPU slice or GPUs this machine lacks.

The dilated 3x3 convolutions of the Cityscapes backbone (ResNet-101 at output stride 8,
769x769 crops: 97x97 maps; layer3 at dilation 2 on 256 channels, layer4 at dilation 4 on
512), forward and both gradients, with the batch split over the target's devices, are
compiled through the deviceless path of ``python -m ccnet_jax.aot`` in every form of
``model.dilated_conv`` (ccnet_jax/ops/dilated_conv.py). Per form: the HLO census (FLOPs of
the convolutions, 2 per multiply-add; convolutions; transposes; map-sized windows on GPU),
the memory plan per device and the bytes accessed by XLA's cost analysis (where the target
reports them). These are compile figures, not timings; ``auto`` is chosen per platform from
them (``AUTO`` in ops/dilated_conv.py).

  python benchmarks/aot_dilated_conv.py --target=tpu:v5e:2x2
  python benchmarks/aot_dilated_conv.py --target=gpu:h100 --dtype=float32 --json rows.json
"""

from __future__ import annotations

import argparse
import json
import time

from ccnet_jax.aot import libraries
from ccnet_jax.aot.analysis import hlo_census
from ccnet_jax.aot.compile import GPU_COMPILER_OPTIONS, prepare
from ccnet_jax.aot.targets import parse_target, target_devices
from ccnet_jax.cli import run_user_command

# (dilation, channels): the 3x3 convolutions of layer3 and layer4 of the dilated ResNet-101.
LAYERS = ((2, 256), (4, 512))
FORMS = ("lax", "space_to_batch_wgrad", "space_to_batch")


def _bytes_accessed(compiled) -> float:
  analysis = compiled.cost_analysis()
  analysis = analysis[0] if isinstance(analysis, (list, tuple)) else analysis
  return float((analysis or {}).get("bytes accessed", 0.0))


def compile_rows(target_text: str, size: int, batch: int, dtype_name: str):
  """One row per layer and form: the compile figures of forward + both gradients."""
  target = parse_target(target_text)
  prepare(target)
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel

  from ccnet_jax.ops.dilated_conv import get_dilated_conv
  from ccnet_jax.training.mesh import batch_sharding, make_mesh

  with libraries.native_logs_discarded():
    mesh = make_mesh(target_devices(target))
  data = batch_sharding(mesh)
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  options = GPU_COMPILER_OPTIONS if target.platform == "gpu" else None
  dtype = jnp.dtype(dtype_name)
  rows = []
  for dilation, channels in LAYERS:
    x = jax.ShapeDtypeStruct((batch, size, size, channels), dtype, sharding=data)
    w = jax.ShapeDtypeStruct((3, 3, channels, channels), dtype, sharding=replicated)
    for form in FORMS:
      conv = get_dilated_conv(form)

      def forward_backward(x, w, conv=conv, dilation=dilation):
        def layer(x, w):
          return conv(
              x,
              w,
              (1, 1),
              ((dilation, dilation),) * 2,
              rhs_dilation=(dilation, dilation),
              dimension_numbers=("NHWC", "HWIO", "NHWC"),
          )

        out, vjp = jax.vjp(layer, x, w)
        return vjp(out)

      start = time.perf_counter()
      with libraries.native_logs_discarded():
        compiled = jax.jit(forward_backward).lower(x, w).compile(options)
      seconds = time.perf_counter() - start
      census = hlo_census(compiled.as_text())
      memory = compiled.memory_analysis()
      rows.append(
          {
              "layer": f"d={dilation}, {channels} ch",
              "form": form,
              "gflops": census.flops / 1e9,
              "gb_accessed": _bytes_accessed(compiled) / 1e9,
              "temp_mib": memory.temp_size_in_bytes / 2**20,
              "convolutions": sum(census.convolutions.values()),
              "transposes": census.transposes,
              "map_sized": len(census.map_sized_windows),
              "seconds": seconds,
          }
      )
      print(f"[{rows[-1]['layer']} {form}] compiled ({seconds:.0f} s)", flush=True)
  return target, mesh.size, rows


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--target", required=True, help="gpu:KIND[xCOUNT] or tpu:GEN:TOPOLOGY")
  parser.add_argument("--size", type=int, default=97, help="the feature map's side")
  parser.add_argument("--batch", type=int, default=8, help="global batch")
  parser.add_argument("--dtype", default="bfloat16")
  parser.add_argument("--json", default="", help="also write the rows to this file")
  args = parser.parse_args()

  def command():
    target, devices, rows = compile_rows(args.target, args.size, args.batch, args.dtype)
    print(
        f"\nDilated 3x3 convolutions, forward + input and weight gradients, {args.dtype},"
        f" batch {args.batch} over {devices} x {target.kind}, {args.size}x{args.size}"
        " (compile figures per device):\n"
    )
    print(
        "| layer | form | GFLOPs | GB accessed | temporaries MiB | convolutions | transposes"
        " | map-sized windows |\n|---|---|---:|---:|---:|---:|---:|---:|"
    )
    for row in rows:
      accessed = f"{row['gb_accessed']:.2f}" if row["gb_accessed"] else "-"
      print(
          f"| {row['layer']} | {row['form']} | {row['gflops']:.1f} | {accessed} |"
          f" {row['temp_mib']:.1f} | {row['convolutions']} | {row['transposes']} |"
          f" {row['map_sized']} |"
      )
    if args.json:
      with open(args.json, "w") as f:
        json.dump({"target": target.name, "devices": devices, "rows": rows}, f, indent=1)

  run_user_command(command)


if __name__ == "__main__":
  main()
