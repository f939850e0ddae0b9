"""The report of a compilation as a markdown table, one column per compiled program."""

from __future__ import annotations

from ccnet_jax.aot.analysis import COLLECTIVES, ProgramReport
from ccnet_jax.aot.compile import TargetReport

GIB = 2**30


def _gib(value: int) -> str:
  return f"{value / GIB:.2f} GiB"


def _fit(program: ProgramReport, device_memory: int) -> str:
  if program.error:
    return f"**no**: {program.error}"
  margin = device_memory - program.planned_bytes
  if margin >= 0:
    return f"yes, {_gib(margin)} spare ({margin / device_memory:.0%})"
  return f"**no**, {_gib(-margin)} over"


def _flops(program: ProgramReport) -> str:
  if program.error:
    return ""
  flops = program.census.flops
  return f"{flops / 1e12:.2f} TFLOP" if flops >= 1e11 else f"{flops / 1e9:.2f} GFLOP"


def _collective(program: ProgramReport, kind: str) -> str:
  count, size = program.census.collectives.get(kind, (0, 0))
  return f"{count} ({size / 2**20:.1f} MiB)" if count else "0"


def format_table(report: TargetReport) -> str:
  """Rows: devices, batch, memory plan and fit, FLOPs, collectives, convolutions, compile time."""
  programs = report.programs
  target = report.target
  rows = [
      ("devices", [f"{report.num_devices} x {report.device_kind}"] * len(programs)),
      (
          "global batch (per device)",
          [f"{p.global_batch} ({p.per_device_batch})" for p in programs],
      ),
      (
          "memory plan per device",
          ["" if p.error else _gib(p.planned_bytes) for p in programs],
      ),
      ("device memory", [_gib(target.device_memory)] * len(programs)),
      ("fits", [_fit(p, target.device_memory) for p in programs]),
      ("FLOPs per device (convolutions, products)", [_flops(p) for p in programs]),
  ]
  kinds = [k for k in COLLECTIVES if any(k in p.census.collectives for p in programs)]
  for kind in sorted(set(kinds) | {"all-reduce", "all-gather"}, key=COLLECTIVES.index):
    rows.append((f"{kind} (bytes)", [_collective(p, kind) for p in programs]))
  convolutions = sorted({kind for p in programs for kind in p.census.convolutions})
  for kind in convolutions:
    label = f"cuDNN {kind}" if kind != "convolution" else "convolutions"
    rows.append((label, [str(p.census.convolutions.get(kind, 0)) for p in programs]))
  rows.append(
      (
          "map-sized conv windows",
          [_windows(p.census.map_sized_windows) for p in programs],
      )
  )
  rows.append(("transposes", [str(p.census.transposes) for p in programs]))
  rows.append(("compile time", [f"{p.compile_seconds:.0f} s" for p in programs]))
  header = f"| {target.name} | " + " | ".join(p.name for p in programs) + " |"
  lines = [header, "|---|" + "---:|" * len(programs)]
  lines += [f"| {label} | " + " | ".join(cells) + " |" for label, cells in rows]
  return "\n".join(lines)


def _windows(windows: list[str]) -> str:
  if not windows:
    return "0"
  kinds = sorted(set(windows))
  shown = ", ".join(f"{windows.count(w)} x `{w}`" for w in kinds[:3])
  return f"**{len(windows)}**: {shown}" + (", ..." if len(kinds) > 3 else "")
