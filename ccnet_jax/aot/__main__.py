"""Compiles a config's train and eval steps for a TPU slice or GPUs, on this machine.

  python -m ccnet_jax.aot --config configs/cityscapes.py --target=gpu:h100
  python -m ccnet_jax.aot --config configs/cityscapes.py --target=tpu:v5e:4x4 \\
      --config.train.global_batch_size=32 --config.model.dtype=bfloat16

Prints, per compiled program, the memory plan of one device against its memory,
FLOPs, collectives, convolutions and the compile time; exits with status 1 when a
plan does not fit. Needs the compilers' libraries (requirements-aot.txt).
"""

import json
import os

from absl import flags
from ml_collections import config_flags

from ccnet_jax import cli
from ccnet_jax.aot.compile import compile_for_target, prepare
from ccnet_jax.aot.table import format_table
from ccnet_jax.aot.targets import parse_target
from ccnet_jax.errors import UserError

_CONFIG = config_flags.DEFINE_config_file("config", None, cli.CONFIG_HELP)
_TARGET = flags.DEFINE_string(
    "target", None, "tpu:GENERATION:TOPOLOGY (tpu:v5e:4x4, tpu:v5p:2x2x1) or gpu:KIND[xCOUNT]."
)
_EVAL = flags.DEFINE_bool("eval", True, "Also compile the evaluation step.")
_EVAL_SIZE = flags.DEFINE_string(
    "eval_size", None, "H,W of the evaluated images (default: the dataset's, else eval.crop_size)."
)
_DUMP = flags.DEFINE_string("dump", None, "Write each program's optimised HLO into this folder.")
_JSON = flags.DEFINE_string("json", None, "Also write the report as JSON to this file.")


def _eval_size() -> tuple[int, int] | None:
  if not _EVAL_SIZE.value:
    return None
  try:
    height, width = (int(v) for v in _EVAL_SIZE.value.split(","))
  except ValueError:
    raise UserError(f"--eval_size={_EVAL_SIZE.value}: use H,W (e.g. 1024,2048).") from None
  return height, width


def _write_whole(path: str, text: str) -> None:
  """Writes ``text`` to ``path`` whole or not at all (a sibling file, then a rename)."""
  partial = f"{path}.partial"
  with open(partial, "w", encoding="utf-8") as f:
    f.write(text)
  os.replace(partial, path)


def main(arguments: list[str]) -> None:
  cli.no_arguments(arguments)
  config = cli.required(_CONFIG)
  target = parse_target(cli.required(_TARGET))
  prepare(target)
  report = compile_for_target(
      config, target, eval_step=_EVAL.value, eval_image_size=_eval_size(), dump_dir=_DUMP.value
  )
  print(format_table(report), flush=True)
  if _JSON.value:
    _write_whole(_JSON.value, json.dumps(report.to_json(), indent=1))
  if not report.fits():
    raise SystemExit(1)


if __name__ == "__main__":
  cli.run(main)
