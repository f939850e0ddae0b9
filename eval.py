"""Evaluate a trained or converted CCNet on the config's evaluation split.

  python eval.py --config configs/synthetic.py                  # the run in runs/synthetic/
  python eval.py --config configs/cityscapes.py --model=best
  python eval.py --config configs/cityscapes.py --workdir runs/eval \\
      --model=converted/ccnet_official --config.eval.scales=0.75,1.0,1.25 --config.eval.flip=True

``--model`` is 'latest' (the run's newest checkpoint), 'best', 'final', or the path of
a model directory written by ``python -m ccnet_jax.convert``. The workdir defaults to
runs/<config file name>/, as for train.py. Metrics are printed and written to
``WORKDIR/eval/metrics.json`` with prediction PNGs beside them.
"""

from absl import app, flags
from ml_collections import config_flags

from ccnet_jax.cli import CONFIG_HELP, default_workdir, parse_flags, print_config, run_user_command
from ccnet_jax.evaluation.run import evaluate_from_workdir

_CONFIG = config_flags.DEFINE_config_file("config", None, CONFIG_HELP)
_WORKDIR = flags.DEFINE_string(
    "workdir",
    None,
    "The run's directory; outputs go to WORKDIR/eval (default: runs/<config" " name>).",
)
_MODEL = flags.DEFINE_string("model", "latest", "'latest', 'best', 'final' or a model directory.")
_PRINT_CONFIG = flags.DEFINE_bool("print_config", False, "Print every config field and exit.")
flags.mark_flags_as_required(["config"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if _PRINT_CONFIG.value:
    print_config(_CONFIG.value)
    return
  workdir = default_workdir(_WORKDIR.value)
  run_user_command(lambda: evaluate_from_workdir(_CONFIG.value, workdir, _MODEL.value))


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
