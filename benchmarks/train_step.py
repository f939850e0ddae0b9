"""The real training step, JAX against the PyTorch reference model, in one run.

For each variant it reports the median time of a step after warm-up, images/s,
compile time, the device memory the step needed, the loss of the first and the last step
(flagged where it is more than 10% from PyTorch's), and model FLOPs utilisation
(FLOPs of the whole step -- forward, backward, optimiser -- from XLA's cost
analysis, over the detected device's dense peak: bfloat16 tensor-core rate for
bfloat16, TF32 for float32, which both XLA and cuDNN use for float32
convolutions by default). The PyTorch rows run the project's independent
reference of the official network (tests/torch_reference.py; BatchNorm +
activation in place of InPlaceABN, which has no train-mode CPU/GPU build here),
with the official criterion and torch.optim.SGD, when torch with CUDA is
installed; their MFU uses the FLOPs XLA counts for the same network.

Each variant runs in its own process (its memory peak is its own). JAX variants
compile concurrently; once none is compiling, the variants take turns on the
device, so every timed region has it alone (``--lock`` names a lock file that
another benchmark holds while it runs, to share the device with it).

  python benchmarks/train_step.py                       # Cityscapes recipe, 769, batch 4
  python benchmarks/train_step.py --variants jax:bfloat16:pallas,torch:bfloat16
  python benchmarks/train_step.py --cpu-smoke           # tiny network, seconds, for CI

A variant is ``jax:DTYPE[:CCA_IMPL[:REMAT]][:FIELD=JSON...]`` (FIELD a field of
``config.model``, e.g. ``bn_fast_variance=true``) or ``torch:DTYPE[:channels_last]``,
DTYPE ``float32`` or ``bfloat16``.
"""

from __future__ import annotations

import argparse
import dataclasses
import fcntl
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

DEFAULT_VARIANTS = (
    "torch:float32",
    "jax:float32:einsum",
    "jax:float32:einsum:save_convs",
    "torch:bfloat16",
    "torch:bfloat16:channels_last",
    "jax:bfloat16:einsum",
    "jax:bfloat16:pallas",
)
SMOKE_VARIANTS = ("jax:float32:einsum", "jax:float32:einsum:save_convs", "torch:float32")

# Dense peak FLOP/s by device kind (vendor datasheets, SXM parts): TF32 for float32.
PEAK_FLOPS = {
    "H200": {"bfloat16": 989e12, "float32": 494e12},
    "H100": {"bfloat16": 989e12, "float32": 494e12},
    "A100": {"bfloat16": 312e12, "float32": 156e12},
}


@dataclasses.dataclass(frozen=True)
class Variant:
  framework: str  # 'jax' or 'torch'
  dtype: str
  cca_impl: str = "einsum"  # jax only
  remat: str = "none"  # jax only
  model_overrides: tuple[tuple[str, Any], ...] = ()  # jax only: other config.model fields
  channels_last: bool = False  # torch only

  @classmethod
  def parse(cls, spec: str) -> "Variant":
    parts = spec.split(":")
    if parts[0] not in ("jax", "torch") or len(parts) < 2:
      raise SystemExit(f"error: bad variant {spec!r}: use jax:DTYPE[:IMPL[:REMAT]] or torch:DTYPE")
    if parts[1] not in ("float32", "bfloat16"):
      raise SystemExit(f"error: bad dtype in variant {spec!r}: use float32 or bfloat16")
    if parts[0] == "torch":
      return cls("torch", parts[1], channels_last=parts[2:] == ["channels_last"])
    fields = [p for p in parts[2:] if "=" not in p]
    overrides = tuple(
        (name, json.loads(value))
        for name, _, value in (p.partition("=") for p in parts[2:])
        if value
    )
    return cls("jax", parts[1], *fields[:2], model_overrides=overrides)

  @property
  def name(self) -> str:
    if self.framework == "torch":
      return f"PyTorch {self.dtype}" + (", channels_last" if self.channels_last else "")
    extras = [] if self.remat == "none" else [f"remat={self.remat}"]
    extras += [f"{name}={json.dumps(value)}" for name, value in self.model_overrides]
    return ", ".join([f"ccnet-jax {self.dtype}", self.cca_impl] + extras)


@dataclasses.dataclass(frozen=True)
class Setting:
  """What every variant trains: the network, the crop and the batch."""

  config: str
  crop: int
  batch: int
  warmup: int
  runs: int
  smoke: bool


def _experiment_config(setting: Setting, variant: Variant):
  """The config file's recipe with this variant's dtype, attention and remat."""
  import importlib.util  # pylint: disable=import-outside-toplevel

  sys.path.insert(0, ROOT)
  spec = importlib.util.spec_from_file_location("experiment_config", setting.config)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  if setting.smoke:  # The official layout shrunk to CPU size, as in the demo.
    config.model.backbone.update(depth=18, base_width=8)
    config.model.head.out_channels = 16
    config.model.aux.channels = 16
  config.model.update(dtype=variant.dtype, cca_impl=variant.cca_impl, remat=variant.remat)
  config.model.update(dict(variant.model_overrides))
  return config


def _random_batch(setting: Setting, num_classes: int, seed: int = 0):
  """Normalised-image-like inputs and labels with an ignored band, as a real crop has."""
  import numpy as np  # pylint: disable=import-outside-toplevel

  rng = np.random.default_rng(seed)
  shape = (setting.batch, setting.crop, setting.crop)
  images = rng.normal(size=shape + (3,)).astype(np.float32)
  labels = rng.integers(0, num_classes, size=shape).astype(np.int32)
  labels[:, : setting.crop // 10] = 255
  return images, labels


def _peak_flops(device_kind: str, dtype: str) -> float | None:
  for kind, peaks in PEAK_FLOPS.items():
    if kind in device_kind:
      return peaks[dtype]
  return None


class DeviceTurn:
  """An exclusive turn on the device, once every variant has compiled.

  Turns start when the file ``barrier`` exists (the parent creates it when no
  variant is compiling any more) and are taken one at a time through a blocking
  ``flock`` on ``lock``, which other programs (another benchmark) may hold too.
  """

  def __init__(self, lock: str, barrier: str):
    self.lock, self.barrier = lock, barrier

  def __enter__(self):
    while not os.path.exists(self.barrier):
      time.sleep(0.2)
    self.file = open(self.lock, "a", encoding="utf-8")  # pylint: disable=consider-using-with
    fcntl.flock(self.file, fcntl.LOCK_EX)
    return self

  def __exit__(self, *exc):
    fcntl.flock(self.file, fcntl.LOCK_UN)
    self.file.close()


def _median_ms(step, warmup: int, runs: int, sync, after_warmup=lambda: None) -> float:
  for _ in range(warmup):
    sync(step())
  after_warmup()
  times = []
  for _ in range(runs):
    start = time.perf_counter()
    sync(step())
    times.append(time.perf_counter() - start)
  return 1e3 * statistics.median(times)


def step_flops(lowered) -> float:
  """FLOPs of the step's HLO before the backend compiles it.

  The compiled program's own analysis misses what runs in library calls (cuDNN
  convolutions on GPU), so it is taken before; it is the same on every platform.
  """
  costs = lowered.cost_analysis()
  costs = costs[0] if isinstance(costs, (list, tuple)) else costs
  return float(costs["flops"])


def measure_jax(setting: Setting, variant: Variant, turn: DeviceTurn, compiled_marker: str):
  """Compiles the project's train step, then (in its turn) times it."""
  import jax  # pylint: disable=import-outside-toplevel

  # pylint: disable=import-outside-toplevel
  from ccnet_jax.models.registry import build_model
  from ccnet_jax.training.mesh import global_batch, make_mesh, replicate
  from ccnet_jax.training.optim import make_optimizer
  from ccnet_jax.training.state import create_train_state
  from ccnet_jax.training.step import make_train_step
  # pylint: enable=import-outside-toplevel

  config = _experiment_config(setting, variant)
  mesh = make_mesh(jax.devices()[:1])  # One device: the comparison is per GPU.
  tx, schedule = make_optimizer(config.optim, config.train.total_steps)
  model_def, state = create_train_state(build_model(config.model), tx, seed=0)
  state = replicate(state, mesh)
  images, labels = _random_batch(setting, config.model.num_classes)
  batch = global_batch({"image": images, "label": labels}, mesh)
  train_step = make_train_step(model_def, tx, schedule, config.loss, mesh)

  start = time.perf_counter()
  lowered = train_step.lower(state, batch)
  compiled = lowered.compile()
  compile_s = time.perf_counter() - start
  with open(compiled_marker, "w", encoding="utf-8"):
    pass
  memory = compiled.memory_analysis()
  planned = (
      memory.argument_size_in_bytes
      + memory.output_size_in_bytes
      + memory.temp_size_in_bytes
      - memory.alias_size_in_bytes
  )
  holder, first = {"state": state}, []

  def step():
    holder["state"], metrics = compiled(holder["state"], batch)
    if not first:
      first.append(metrics["loss"])  # The loss of the initial weights.
    return metrics

  with turn:
    ms = _median_ms(step, setting.warmup, setting.runs, jax.block_until_ready)
    last_loss = float(step()["loss"])
    stats = jax.devices()[0].memory_stats() or {}
  device = jax.devices()[0]
  return {
      "ms": ms,
      "compile_s": compile_s,
      "flops": step_flops(lowered),
      "peak_bytes": stats.get("peak_bytes_in_use"),
      "planned_bytes": planned,
      "first_loss": float(first[0]),
      "last_loss": last_loss,
      "device": f"{device.platform} {device.device_kind}",
      "versions": f"jax {jax.__version__}",
  }


def _torch_reference_model(setting: Setting, variant: Variant):
  """The official network in PyTorch, with trainable BatchNorm + activation norms."""
  import torch  # pylint: disable=import-outside-toplevel
  from torch import nn  # pylint: disable=import-outside-toplevel

  sys.path.insert(0, ROOT)
  from tests import torch_reference  # pylint: disable=import-outside-toplevel

  class BatchNormAct(nn.Sequential):

    def __init__(self, channels: int, activation: str):
      act = nn.LeakyReLU(0.01) if activation == "leaky_relu" else nn.Identity()
      super().__init__(nn.BatchNorm2d(channels), act)

  def swap_norms(module: nn.Module):
    for name, child in module.named_children():
      if type(child).__name__ == "InPlaceABN":
        setattr(module, name, BatchNormAct(child.weight.shape[0], child.activation))
      else:
        swap_norms(child)

  kwargs = dict(depth=18, width=8, out_channels=16, dsn_channels=16) if setting.smoke else {}
  model = torch_reference.OfficialCCNet(num_classes=19, recurrence=2, **kwargs)
  swap_norms(model)
  device = "cuda" if torch.cuda.is_available() else "cpu"
  model = model.to(device).train()
  if variant.channels_last:
    model = model.to(memory_format=torch.channels_last)
  return model, device


def measure_torch(setting: Setting, variant: Variant, turn: DeviceTurn):
  """One SGD step of the official recipe, eager, cuDNN autotuned (cudnn.benchmark)."""
  import torch  # pylint: disable=import-outside-toplevel
  import torch.nn.functional as F  # pylint: disable=import-outside-toplevel

  if not (setting.smoke or torch.cuda.is_available()):
    raise RuntimeError("torch with CUDA is not installed; PyTorch rows need a GPU")
  torch.backends.cudnn.benchmark = True
  with turn:
    model, device = _torch_reference_model(setting, variant)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9, weight_decay=1e-4)
    images, labels = _random_batch(setting, 19)
    images = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous().to(device)
    if variant.channels_last:
      images = images.to(memory_format=torch.channels_last)
    labels = torch.from_numpy(labels).long().to(device)
    autocast = torch.autocast(device, torch.bfloat16, enabled=variant.dtype == "bfloat16")

    def loss_of(logits):
      logits = F.interpolate(
          logits.float(), size=labels.shape[1:], mode="bilinear", align_corners=True
      )
      return F.cross_entropy(logits, labels, ignore_index=255)

    first = []

    def step():
      optimizer.zero_grad(set_to_none=True)
      with autocast:
        main, aux = model(images)
      loss = loss_of(main) + 0.4 * loss_of(aux)
      loss.backward()
      optimizer.step()
      if not first:
        first.append(loss.detach())  # The loss of the initial weights.
      return loss

    def sync(loss):
      if device == "cuda":
        torch.cuda.synchronize()
      return loss

    # The peak of the timed steps: cudnn.benchmark's trials in the warm-up allocate
    # workspaces of tens of GB that a training run never holds again.
    reset_peak = torch.cuda.reset_peak_memory_stats if device == "cuda" else lambda: None
    ms = _median_ms(step, setting.warmup, setting.runs, sync, reset_peak)
    last_loss = step().item()
    peak = torch.cuda.max_memory_allocated() if device == "cuda" else None
  name = torch.cuda.get_device_name() if device == "cuda" else "cpu"
  return {
      "ms": ms,
      "compile_s": None,
      "flops": None,
      "peak_bytes": peak,
      "planned_bytes": None,
      "first_loss": first[0].item(),
      "last_loss": last_loss,
      "device": f"{device} {name}",
      "versions": f"torch {torch.__version__}",
  }


def _child(args) -> None:
  setting = Setting(**json.loads(args.setting))
  variant = Variant.parse(args.child)
  turn = DeviceTurn(args.lock, args.barrier)
  try:
    if variant.framework == "jax":
      result = measure_jax(setting, variant, turn, args.result + ".compiled")
    else:
      result = measure_torch(setting, variant, turn)
  except Exception as error:  # pylint: disable=broad-except
    result = {"error": f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"}
  with open(args.result, "w", encoding="utf-8") as f:
    json.dump(result, f)


def _run_children(
    setting: Setting, specs, timeout: float, jobs: int, env, lock: str | None
) -> dict[str, dict]:
  """Starts one process per variant; the device is theirs one at a time."""
  workdir = tempfile.mkdtemp(prefix="train_step_bench_")
  lock = lock or os.path.join(workdir, "device.lock")
  barrier = os.path.join(workdir, "compiled")
  setting_json = json.dumps(dataclasses.asdict(setting))
  pending = list(specs)
  running: dict[str, tuple[subprocess.Popen, float, str]] = {}
  results: dict[str, dict] = {}
  released = False
  while pending or running:
    while pending and len(running) < jobs:
      spec = pending.pop(0)
      path = os.path.join(workdir, f"{len(results) + len(running)}.json")
      command = [
          sys.executable,
          os.path.abspath(__file__),
          "--child",
          spec,
          "--lock",
          lock,
          "--barrier",
          barrier,
          "--result",
          path,
          "--setting",
          setting_json,
      ]
      running[spec] = (subprocess.Popen(command, env=env), time.monotonic(), path)
    for spec, (process, started, path) in list(running.items()):
      if process.poll() is None and time.monotonic() - started > timeout:
        process.kill()
        process.wait()
        results[spec] = {"error": f"timed out after {timeout:.0f} s"}
      elif process.poll() is not None:
        try:
          with open(path, encoding="utf-8") as f:
            results[spec] = json.load(f)
        except (OSError, ValueError):
          results[spec] = {"error": f"exited with status {process.returncode}"}
      else:
        continue
      del running[spec]
      _print_row(spec, results[spec])
    compiling = [
        spec
        for spec, (_, _, path) in running.items()
        if spec.startswith("jax") and not os.path.exists(path + ".compiled")
    ]
    # With fewer slots than variants, later ones compile while earlier ones are timed.
    if not released and not compiling and (not pending or len(running) >= jobs):
      open(barrier, "w", encoding="utf-8").close()  # pylint: disable=consider-using-with
      released = True
    time.sleep(0.2)
  return results


# A variant whose first or last loss is this far from the PyTorch reference's is flagged.
LOSS_TOLERANCE = 0.10


def _loss_cells(result: dict, reference: dict | None) -> tuple[list[str], bool]:
  """The first and last loss, each with its change against ``reference``; flagged or not."""
  cells, flagged = [], False
  for key in ("first_loss", "last_loss"):
    value = result.get(key)
    if value is None:
      cells.append("")
    elif reference is None or reference is result or reference.get(key) is None:
      cells.append(f"{value:.2f}")
    else:
      change = value / reference[key] - 1
      text = f"{value:.2f} ({change:+.0%})"
      if not abs(change) <= LOSS_TOLERANCE:  # NaN too.
        text, flagged = f"**{text}**", True
      cells.append(text)
  return cells, flagged


def _print_row(spec: str, result: dict) -> None:
  print(f"[{spec}] {json.dumps(result)}", flush=True)


def _gb(value) -> str:
  return "" if value is None else f"{value / 2**30:.2f}"


def table(setting: Setting, results: dict[str, dict]) -> str:
  """The markdown table; ratios and losses against the PyTorch row of the same dtype.

  Losses: the first step's (the initial weights') and the last timed step's, on the same
  batch; a variant more than ``LOSS_TOLERANCE`` from the PyTorch row of its dtype (else of
  float32) in either is flagged, in bold and in a line under the table.

  Step memory: for JAX, what XLA's buffer assignment allocates for a step
  (arguments + outputs + temporaries - donated), which is the steady-state peak
  (the allocator's own peak also counts compile-time autotuning buffers); for
  PyTorch, the allocator's peak during the timed steps.
  """
  flops_by_dtype = {
      Variant.parse(s).dtype: r["flops"] for s, r in results.items() if r.get("flops")
  }
  torch_rows = {}
  for spec, result in results.items():
    variant = Variant.parse(spec)
    if variant.framework == "torch" and not variant.channels_last and "ms" in result:
      torch_rows[variant.dtype] = result
  devices = sorted({r["device"] for r in results.values() if "device" in r})
  versions = sorted({r["versions"] for r in results.values() if "versions" in r})
  lines = [
      f"Train step, batch {setting.batch} of {setting.crop}x{setting.crop}, median of"
      f" {setting.runs} steps after {setting.warmup} warm-up; {', '.join(devices)};"
      f" {', '.join(versions)}.",
      "",
      "| variant | ms/step | img/s | vs PyTorch same dtype | compile s | step memory GB |"
      " TFLOP/s | MFU | first loss | last loss |",
      "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
  ]
  flagged = []
  for spec, result in results.items():
    variant = Variant.parse(spec)
    if "error" in result:
      lines.append(f"| {variant.name} | failed: {result['error']} | | | | | | | | |")
      continue
    ms = result["ms"]
    flops = result.get("flops") or flops_by_dtype.get(variant.dtype)
    tflops = flops / (ms / 1e3) / 1e12 if flops else None
    peak = _peak_flops(result["device"], variant.dtype)
    reference = torch_rows.get(variant.dtype)
    losses, off = _loss_cells(result, reference or torch_rows.get("float32"))
    if off:
      flagged.append(variant.name)
    cells = [
        variant.name,
        f"{ms:.1f}",
        f"{setting.batch / (ms / 1e3):.1f}",
        f"{reference['ms'] / ms:.2f}x" if reference else "",
        "" if result["compile_s"] is None else f"{result['compile_s']:.0f}",
        _gb(result["planned_bytes"] or result["peak_bytes"]),
        "" if tflops is None else f"{tflops:.1f}",
        f"{tflops * 1e12 / peak:.0%}" if tflops and peak else "",
        *losses,
    ]
    lines.append("| " + " | ".join(cells) + " |")
  lines.append("")
  lines.append(
      f"Losses more than {LOSS_TOLERANCE:.0%} from PyTorch's (bold):"
      f" {', '.join(flagged) if flagged else 'none'}."
  )
  return "\n".join(lines)


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--config", default=os.path.join(ROOT, "configs", "cityscapes.py"))
  parser.add_argument("--crop", type=int, default=769)
  parser.add_argument("--batch", type=int, default=4)
  parser.add_argument("--variants", default=",".join(DEFAULT_VARIANTS))
  parser.add_argument("--warmup", type=int, default=3)
  parser.add_argument("--runs", type=int, default=10)
  parser.add_argument("--jobs", type=int, default=8, help="variants compiling at once")
  parser.add_argument("--timeout", type=float, default=480, help="seconds per variant")
  parser.add_argument("--json", help="also write the results here (JSON)")
  parser.add_argument(
      "--cpu-smoke",
      action="store_true",
      help="the official layout shrunk to CPU size, 65x65 crops, batch 2",
  )
  parser.add_argument(
      "--lock", help="a file other GPU programs flock while they run; timed" " steps wait for it"
  )
  parser.add_argument("--child", help=argparse.SUPPRESS)
  parser.add_argument("--barrier", help=argparse.SUPPRESS)
  parser.add_argument("--result", help=argparse.SUPPRESS)
  parser.add_argument("--setting", help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  if args.child:
    sys.path.insert(0, ROOT)
    _child(args)
    return

  specs = args.variants.split(",")
  if args.cpu_smoke:
    if args.variants == ",".join(DEFAULT_VARIANTS):
      specs = list(SMOKE_VARIANTS)
    args.crop, args.batch, args.warmup, args.runs, args.jobs = 65, 2, 1, 2, 1
  for spec in specs:
    Variant.parse(spec)
  setting = Setting(args.config, args.crop, args.batch, args.warmup, args.runs, args.cpu_smoke)
  env = dict(os.environ, XLA_PYTHON_CLIENT_PREALLOCATE="false")
  if args.cpu_smoke:
    env["JAX_PLATFORMS"] = "cpu"
  results = _run_children(setting, specs, args.timeout, args.jobs, env, args.lock)
  results = {spec: results[spec] for spec in specs}
  if args.json:
    with open(args.json, "w", encoding="utf-8") as f:
      json.dump({"setting": dataclasses.asdict(setting), "results": results}, f, indent=1)
  print(table(setting, results))


if __name__ == "__main__":
  main()
