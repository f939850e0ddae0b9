"""Compiles the Pallas criss-cross kernels for a GPU or a TPU slice this machine does not have.

Every configuration of ccnet_jax.ops.pallas.TUNING_GRID (Triton's tunables; a TPU takes
the channel slice only), forward and backward, in float32 and bfloat16, at one shape, is
compiled through the deviceless path of ``python -m ccnet_jax.aot`` (Triton and ptxas on
a GPU target, Mosaic on a TPU one); on a TPU slice the batch is split over its chips and
the kernels run per chip. A configuration that fails to compile is a row "failed: ...".

  python benchmarks/aot_kernels.py --target=gpu:h100                 # B=8, 97x97, C'=64, C=512
  python benchmarks/aot_kernels.py --target=tpu:v5e:2x2
"""

from __future__ import annotations

import argparse
import time

from ccnet_jax.aot import libraries
from ccnet_jax.aot.analysis import hlo_census
from ccnet_jax.aot.compile import GPU_COMPILER_OPTIONS, prepare
from ccnet_jax.aot.targets import parse_target, target_devices
from ccnet_jax.cli import run_user_command


def _configurations(platform: str):
  from ccnet_jax.ops.pallas import BlockSizes, tuning_configurations

  if platform == "gpu":
    return tuning_configurations()
  slices = sorted({sizes.channel_slice for sizes in tuning_configurations()})
  return [BlockSizes(channel_slice=channel_slice) for channel_slice in slices]


def compile_rows(target_text: str, size: int, batch: int, key_channels: int, channels: int):
  """One row per dtype and configuration: whether forward + backward compiled, and how long."""
  target = parse_target(target_text)
  prepare(target)
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel

  from ccnet_jax.ops.pallas import criss_cross_attention_pallas
  from ccnet_jax.training.mesh import batch_sharding, make_mesh

  with libraries.native_logs_discarded():
    mesh = make_mesh(target_devices(target))
  sharding = batch_sharding(mesh)
  options = GPU_COMPILER_OPTIONS if target.platform == "gpu" else None
  rows = []
  for dtype in (jnp.float32, jnp.bfloat16):
    q = jax.ShapeDtypeStruct((batch, size, size, key_channels), dtype, sharding=sharding)
    v = jax.ShapeDtypeStruct((batch, size, size, channels), dtype, sharding=sharding)
    for sizes in _configurations(target.platform):

      def forward_backward(q, k, v, sizes=sizes):
        with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
          attend = lambda q, k, v: criss_cross_attention_pallas(q, k, v, block_sizes=sizes)
          out, vjp = jax.vjp(attend, q, k, v)
          return out, vjp(out)

      start = time.perf_counter()
      try:
        with libraries.native_logs_discarded():
          compiled = jax.jit(forward_backward).lower(q, q, v).compile(options)
        text = compiled.as_text()
        kernels = text.count("__gpu$xla.gpu.triton") + text.count("tpu_custom_call")
        gathers = hlo_census(text).collectives.get("all-gather", [0])[0]
        result = f"compiled: {kernels} kernels, {gathers} all-gathers"
      except Exception as error:  # pylint: disable=broad-except
        result = f"failed: {str(error).strip().splitlines()[0][:160]}"
      seconds = time.perf_counter() - start
      rows.append((jnp.dtype(dtype).name, sizes, result, seconds))
      print(f"[{rows[-1][0]} {sizes}] {result} ({seconds:.0f} s)", flush=True)
  return target, mesh.size, rows


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--target", required=True, help="gpu:KIND[xCOUNT] or tpu:GEN:TOPOLOGY")
  parser.add_argument("--size", type=int, default=97)
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--key-channels", type=int, default=64)
  parser.add_argument("--channels", type=int, default=512)
  args = parser.parse_args()

  def command():
    target, devices, rows = compile_rows(
        args.target, args.size, args.batch, args.key_channels, args.channels
    )
    print(
        f"\nPallas criss-cross, forward + backward, B={args.batch} over {devices} x"
        f" {target.kind}, {args.size}x{args.size}, C'={args.key_channels}, C={args.channels}:\n"
    )
    print("| dtype | configuration | result | compile s |\n|---|---|---|---:|")
    for dtype, sizes, result, seconds in rows:
      fields = ", ".join(f"{k}={v}" for k, v in vars(sizes).items())
      print(f"| {dtype} | {fields} | {result} | {seconds:.0f} |")

  run_user_command(command)


if __name__ == "__main__":
  main()
