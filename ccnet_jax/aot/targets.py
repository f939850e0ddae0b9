"""Compile targets: TPU slices and GPU hosts, as compile-only JAX devices.

A target is written ``tpu:GENERATION:TOPOLOGY`` (``tpu:v5e:4x4``, ``tpu:v5p:2x2x1``,
``tpu:v6e:2x2``: the topology libtpu names) or ``gpu:KIND[xCOUNT]`` (``gpu:h100``,
``gpu:h200x8``: COUNT GPUs, 8 to a host). TPU devices come from libtpu's compile-only
topologies; GPU devices from the CUDA plugin given a ``GpuTargetConfigProto``, the
device description XLA compiles for, which ``gpu_targets/`` holds per GPU (copied
from openxla/xla, each file names its source).
"""

from __future__ import annotations

import dataclasses
import math
import pathlib
import re

import jax
from jax.experimental import topologies

from ccnet_jax.errors import UserError

GPU_TARGETS = pathlib.Path(__file__).with_name("gpu_targets")
GPUS_PER_HOST = 8

# HBM per chip, from the Cloud TPU system architecture pages (cloud.google.com/tpu/docs/
# v4, v5e, v5p, v6e), read as GiB. The TPU compiler checks the real limit itself: a
# program that does not fit fails to compile.
TPU_MEMORY_GIB = {"v4": 32, "v5e": 16, "v5p": 95, "v6e": 32}

_TPU = re.compile(r"tpu:(v\w+):(\d+(?:x\d+)+)")
_GPU = re.compile(r"gpu:([a-z]+\d+)(?:x(\d+))?")


@dataclasses.dataclass(frozen=True)
class Target:
  """Where a program is compiled for.

  Attributes:
    platform: 'tpu' or 'gpu'.
    kind: the TPU generation ('v5e') or the GPU ('h100').
    topology: libtpu's topology ('4x4') or the CUDA plugin's ('1x1x8': slices, hosts,
      GPUs per host).
    device_memory: bytes of memory of one device.
  """

  platform: str
  kind: str
  topology: str
  device_memory: int

  @property
  def name(self) -> str:
    """The target as ``--target`` writes it."""
    if self.platform == "tpu":
      return f"tpu:{self.kind}:{self.topology}"
    count = math.prod(int(n) for n in self.topology.split("x"))
    return f"gpu:{self.kind}" + (f"x{count}" if count > 1 else "")


def gpu_kinds() -> list[str]:
  return sorted(path.stem for path in GPU_TARGETS.glob("*.txtpb"))


def _gpu_config(kind: str) -> str:
  path = GPU_TARGETS / f"{kind}.txtpb"
  if not path.is_file():
    raise UserError(f"--target=gpu:{kind}: no description of this GPU; use one of {gpu_kinds()}.")
  return path.read_text()


def parse_target(text: str) -> Target:
  """The target that ``text`` names; a malformed one is a UserError naming the forms."""
  forms = (
      f"use tpu:GENERATION:TOPOLOGY (e.g. tpu:v5e:4x4, tpu:v5p:2x2x1; generations"
      f" {sorted(TPU_MEMORY_GIB)}) or gpu:KIND[xCOUNT] (e.g. gpu:h100, gpu:h200x8; kinds"
      f" {gpu_kinds()})"
  )
  if match := _TPU.fullmatch(text):
    generation, topology = match.groups()
    if generation not in TPU_MEMORY_GIB:
      raise UserError(f"--target={text}: unknown TPU generation {generation!r}; {forms}.")
    return Target("tpu", generation, topology, TPU_MEMORY_GIB[generation] * 2**30)
  if match := _GPU.fullmatch(text):
    kind, count = match.group(1), int(match.group(2) or 1)
    config = _gpu_config(kind)
    if count < 1 or (count > GPUS_PER_HOST and count % GPUS_PER_HOST):
      raise UserError(
          f"--target={text}: {count} GPUs; use up to {GPUS_PER_HOST}, or a multiple of"
          f" {GPUS_PER_HOST} (whole hosts)."
      )
    hosts = max(count // GPUS_PER_HOST, 1)
    memory = int(re.search(r"device_memory_size:\s*(\d+)", config).group(1))
    return Target("gpu", kind, f"1x{hosts}x{count // hosts}", memory)
  raise UserError(f"--target={text} is not a target; {forms}.")


def target_devices(target: Target) -> list[jax.Device]:
  """Compile-only devices of ``target`` (the compiler's libraries must be importable).

  For GPUs JAX must run on CPU (``jax_platforms='cpu'``, set before its backends
  start), so that the CUDA plugin looks for no GPU.
  """
  try:
    if target.platform == "tpu":
      description = topologies.get_topology_desc(
          platform="tpu", topology_name=f"{target.kind}:{target.topology}"
      )
    else:
      description = topologies.get_topology_desc(
          platform="cuda",
          topology_name="",
          target_config=_gpu_config(target.kind),
          topology=target.topology,
      )
  except (RuntimeError, ValueError) as error:  # JaxRuntimeError is a RuntimeError.
    message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    raise UserError(f"--target={target.name} cannot be built: {message}") from error
  return list(description.devices)
