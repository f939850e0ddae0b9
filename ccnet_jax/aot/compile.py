"""Compiles a config's steps for a target and reports each compiled program.

The compilers of absent devices take their libraries from :mod:`ccnet_jax.aot.libraries`,
which must be made importable before JAX starts its backends: call :func:`prepare`
first, then :func:`compile_for_target`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from typing import Any, Iterator

import jax
import ml_collections

from ccnet_jax.aot import analysis, libraries, programs
from ccnet_jax.aot.targets import Target, target_devices
from ccnet_jax.errors import UserError
from ccnet_jax.training.mesh import make_mesh

# No GPU to time candidates on: XLA takes its default algorithm for each convolution, and
# cuBLAS for each matrix product (without autotuning, its Triton tiling of some products,
# the loss's bilinear resize among them, finds no tile sizes and fails).
GPU_COMPILER_OPTIONS = {"xla_gpu_autotune_level": 0, "xla_gpu_enable_triton_gemm": False}


def prepare(target: Target) -> None:
  """Makes the target's compiler importable and keeps JAX on the CPU (no device is sought).

  libtpu lets one process at a time hold the TPUs of a host (a lock file in /tmp); a
  compile-only topology holds none, so several compilations may run at once.
  """
  libraries.require(target.platform)
  if target.platform == "tpu":
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  jax.config.update("jax_platforms", "cpu")


@dataclasses.dataclass
class TargetReport:
  target: Target
  device_kind: str
  num_devices: int
  programs: list[analysis.ProgramReport]

  def fits(self) -> bool:
    return all(not p.error and p.planned_bytes <= self.target.device_memory for p in self.programs)

  def to_json(self) -> dict[str, Any]:
    return {
        "target": dataclasses.asdict(self.target),
        "device_kind": self.device_kind,
        "num_devices": self.num_devices,
        "fits": self.fits(),
        "programs": [p.to_json() for p in self.programs],
    }


def _out_of_memory(error: Exception) -> str | None:
  """The compiler's own 'does not fit' message, if that is why compilation failed."""
  text = str(error)
  if "RESOURCE_EXHAUSTED" not in text and "Ran out of memory" not in text:
    return None
  lines = [line.strip() for line in text.splitlines() if line.strip()]
  return lines[0][:400]


@contextlib.contextmanager
def lowering(name: str, target: Target) -> Iterator[None]:
  """What the target cannot run (a kernel XLA cannot partition) as one line naming both."""
  try:
    yield
  except NotImplementedError as error:
    first = next((line for line in str(error).splitlines() if line.strip()), "")
    raise UserError(f"the {name} cannot be lowered for {target.name}: {first[:400]}") from error


def _compile(name, lowered, target, *, global_batch, devices, dump_dir):
  options = GPU_COMPILER_OPTIONS if target.platform == "gpu" else None
  start = time.perf_counter()
  try:
    compiled = lowered.compile(options)
  except jax.errors.JaxRuntimeError as error:
    message = _out_of_memory(error)
    if message is None:
      first = next((line for line in str(error).splitlines() if line.strip()), "")
      raise UserError(f"the {name} does not compile for {target.name}: {first[:400]}") from error
    return analysis.ProgramReport(
        name,
        global_batch,
        global_batch // devices,
        time.perf_counter() - start,
        {},
        0,
        analysis.Census(),
        error=message,
    )
  seconds = time.perf_counter() - start
  if dump_dir:
    path = os.path.join(dump_dir, f"{name.replace(' ', '_')}.hlo.txt")
    with open(path, "w", encoding="utf-8") as f:
      f.write(compiled.as_text())
  return analysis.program_report(
      name, compiled, seconds=seconds, global_batch=global_batch, devices=devices
  )


def compile_for_target(
    config: ml_collections.ConfigDict,
    target: Target,
    *,
    eval_step: bool = True,
    eval_image_size: tuple[int, int] | None = None,
    dump_dir: str | None = None,
) -> TargetReport:
  """Compiles the train step (and the evaluation step) of ``config`` for ``target``."""
  if dump_dir:
    try:
      os.makedirs(dump_dir, exist_ok=True)
    except OSError as error:
      raise UserError(f"--dump={dump_dir} cannot be created: {error.strerror}.") from error
  with libraries.native_logs_discarded():
    devices = target_devices(target)
    mesh = make_mesh(devices)
    count = len(devices)
    with lowering("train step", target):
      lowered = programs.lower_train_step(config, mesh)
    batch = int(config.train.global_batch_size)
    reports = [
        _compile(
            "train step", lowered, target, global_batch=batch, devices=count, dump_dir=dump_dir
        )
    ]
    if eval_step:
      size = eval_image_size or programs.eval_image_size(config)
      with lowering("eval step", target):
        lowered, batch = programs.lower_eval_step(config, mesh, size)
      reports.append(
          _compile(
              "eval step", lowered, target, global_batch=batch, devices=count, dump_dir=dump_dir
          )
      )
  return TargetReport(target, devices[0].device_kind, count, reports)
