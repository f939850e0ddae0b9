"""What a compiled program holds: its memory plan, FLOPs, collectives and convolutions.

The census reads the optimised HLO text of the compiled program (after SPMD
partitioning: the program one device runs), so it counts what the device will
execute: the collectives XLA inserted, the cuDNN calls of a GPU program and the
windows of its convolutions.
"""

from __future__ import annotations

import collections
import dataclasses
import re
from typing import Any

COLLECTIVES = (
    "all-reduce",
    "all-gather",
    "reduce-scatter",
    "all-to-all",
    "ragged-all-to-all",
    "collective-permute",
    "collective-broadcast",
)

# No layer of the networks here has a kernel larger than 7x7 (the classic stem): a wider
# convolution window is a feature map, i.e. a weight gradient written as a forward
# convolution whose filter is the output gradient.
LARGEST_KERNEL = 7

_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4}
_BYTES.update({"u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16})
_ARRAY = re.compile(r"\b([a-z]+\d*(?:e\d+m\d+\w*)?)\[([\d,]*)\]")
_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(.*)$")
_OPERAND = re.compile(r"%([\w.\-]+)")
_CONTRACTING = re.compile(r"lhs_contracting_dims=\{([\d,]*)\}")
_CUBLAS_CONTRACTING = re.compile(r'"lhs_contracting_dimensions":\[([^\]]*)\]')
_LABELS = re.compile(r"dim_labels=(\w+->\w+)")
_WINDOW = re.compile(r"window=\{size=(\d+(?:x\d+)*)([^}]*)\}")
_CUDNN = re.compile(r'custom_call_target="__cudnn\$(\w+)"')


def shape_bytes(shape: str) -> int:
  """Bytes of the arrays an HLO shape names (a tuple's elements summed)."""
  total = 0
  for dtype, dims in _ARRAY.findall(shape):
    count = 1
    for dim in filter(None, dims.split(",")):
      count *= int(dim)
    total += count * _BYTES.get(dtype, 1)
  return total


def _split_result(rest: str) -> tuple[str, str, str]:
  """``(shape, opcode, remainder)`` of the text after ``name =``."""
  if rest.startswith("("):  # A tuple shape: up to its closing parenthesis.
    depth = 0
    for index, char in enumerate(rest):
      depth += {"(": 1, ")": -1}.get(char, 0)
      if depth == 0:
        break
    shape, tail = rest[: index + 1], rest[index + 1 :].lstrip()
  else:
    shape, _, tail = rest.partition(" ")
  opcode = tail.split("(", 1)[0].strip()
  return shape, opcode, tail


def _dims(shape: str) -> list[list[int]]:
  """The dimensions of each array of an HLO shape."""
  return [[int(d) for d in filter(None, dims.split(","))] for _, dims in _ARRAY.findall(shape)]


def _operands(tail: str) -> list[str]:
  """The operand names of an instruction, from the text that starts with its opcode."""
  depth, end = 0, len(tail)
  for index, char in enumerate(tail):
    depth += {"(": 1, ")": -1}.get(char, 0)
    if char == ")" and depth == 0:
      end = index
      break
  return _OPERAND.findall(tail[:end])


def _product(values) -> int:
  total = 1
  for value in values:
    total *= value
  return total


def _convolution_flops(
    forward_out: list[int], kernel: list[int], labels: str, lhs_dilation: list[int]
) -> int:
  """2 x outputs x kernel taps x input features per group; labels such as b01f_o01i->b01f.

  A tap counts where it meets the input, not the holes of its dilation (``lhs_dilate``):
  a window of k over an input dilated by l meets k / l of its values on average. (XLA
  writes a TPU's batched matrix product as such a convolution: the batch is a spatial
  dimension dilated by its size under a window of its size, one product per output.)
  """
  rhs = labels.split("_")[1].split("->")[0]
  taps = 1.0
  for label, size in zip(rhs, kernel):
    if label.isdigit():
      taps *= size / (lhs_dilation[int(label)] if lhs_dilation else 1)
  return round(2 * _product(forward_out) * taps * kernel[rhs.index("i")])


def _lhs_dilation(window_attributes: str) -> list[int]:
  """The ``lhs_dilate=AxB`` of a window's attributes, [] when it has none."""
  match = re.search(r"lhs_dilate=(\d+(?:x\d+)*)", window_attributes)
  return [int(d) for d in match.group(1).split("x")] if match else []


# Which operand (or the result, None) holds the forward output and the kernel, by cuDNN call.
_CUDNN_OPERANDS = {
    "convForward": (None, 1),
    "convBiasActivationForward": (None, 1),
    "convBackwardInput": (0, 1),
    "convBackwardFilter": (1, None),
}


@dataclasses.dataclass
class Census:
  """Counts over the instructions of an HLO module (every computation, fused ones too)."""

  collectives: dict[str, list[int]] = dataclasses.field(default_factory=dict)  # [count, bytes]
  convolutions: dict[str, int] = dataclasses.field(default_factory=dict)
  map_sized_windows: list[str] = dataclasses.field(default_factory=list)
  transposes: int = 0
  flops: int = 0  # Of the convolutions and matrix products.


def _instructions(text: str):
  """(name, shape, opcode, text from the opcode on) of each instruction."""
  for line in text.splitlines():
    match = _INSTRUCTION.match(line)
    if match:
      yield (match.group(1), *_split_result(match.group(2)))


def hlo_census(text: str) -> Census:
  """Collectives, convolutions, transposes and the FLOPs of convolutions and products.

  An async collective is counted once, by its done op, with the bytes of its
  result. Convolutions are counted by kind: the cuDNN call (``convForward``,
  ``convBackwardFilter``...) on GPU, ``convolution`` elsewhere; on GPU each window
  wider than :data:`LARGEST_KERNEL` is listed (a TPU lays convolutions out its own
  way: its windows are not those of the network). FLOPs count 2 per multiply-add of
  every convolution (cuDNN's too) and every ``dot``, fused ones included.
  """
  census = Census()
  collectives = collections.defaultdict(lambda: [0, 0])
  convolutions = collections.Counter()
  shapes = {name: _dims(shape) for name, shape, _, _ in _instructions(text)}
  for _, shape, opcode, tail in _instructions(text):
    kind = opcode[: -len("-done")] if opcode.endswith("-done") else opcode
    if kind in COLLECTIVES:
      collectives[kind][0] += 1
      collectives[kind][1] += shape_bytes(shape)
    elif opcode == "transpose":
      census.transposes += 1
    elif opcode == "dot" or (opcode == "custom-call" and "__cublas$" in tail):
      lhs = shapes[_operands(tail)[0]][0]
      contracted = _CONTRACTING.search(tail) or _CUBLAS_CONTRACTING.search(tail)
      dims = re.findall(r"\d+", contracted.group(1)) if contracted else []
      census.flops += 2 * _product(_dims(shape)[0]) * _product(lhs[int(d)] for d in dims)
    cudnn = _CUDNN.search(tail) if opcode == "custom-call" else None
    if opcode != "convolution" and not cudnn:
      continue
    call = cudnn.group(1) if cudnn else "convolution"
    convolutions[call] += 1
    operands = [shapes[name][0] for name in _operands(tail)]
    output_at, kernel_at = _CUDNN_OPERANDS.get(call, (None, 1))
    pick = lambda at: _dims(shape)[0] if at is None else operands[at]
    labels = _LABELS.search(tail)
    window = _WINDOW.search(tail)
    if labels:
      # A cuDNN call's window is its forward convolution's: no holes to discount.
      dilation = _lhs_dilation(window.group(2)) if window and not cudnn else []
      census.flops += _convolution_flops(
          pick(output_at), pick(kernel_at), labels.group(1), dilation
      )
    if cudnn and window and max(int(s) for s in window.group(1).split("x")) > LARGEST_KERNEL:
      census.map_sized_windows.append(f"size={window.group(1)}{window.group(2)}")
  census.collectives = {kind: list(value) for kind, value in sorted(collectives.items())}
  census.convolutions = dict(sorted(convolutions.items()))
  return census


@dataclasses.dataclass
class ProgramReport:
  """One compiled program, as :func:`program_report` reads it (bytes per device)."""

  name: str
  global_batch: int
  per_device_batch: int
  compile_seconds: float
  memory: dict[str, int]
  planned_bytes: int
  census: Census
  error: str = ""

  def to_json(self) -> dict[str, Any]:
    return dataclasses.asdict(self)


def program_report(name, compiled, *, seconds, global_batch, devices) -> ProgramReport:
  """The memory plan, FLOPs and census of ``compiled`` (a ``jax.stages.Compiled``).

  The plan is what XLA's buffer assignment allocates on one device: arguments +
  outputs + temporaries - what the outputs alias (donated inputs) + the program's code.
  """
  stats = compiled.memory_analysis()
  memory = {
      field: int(getattr(stats, f"{field}_size_in_bytes"))
      for field in ("argument", "output", "temp", "alias", "generated_code")
  }
  planned = (
      memory["argument"]
      + memory["output"]
      + memory["temp"]
      - memory["alias"]
      + memory["generated_code"]
  )
  return ProgramReport(
      name=name,
      global_batch=global_batch,
      per_device_batch=global_batch // devices,
      compile_seconds=seconds,
      memory=memory,
      planned_bytes=planned,
      census=hlo_census(compiled.as_text()),
  )
