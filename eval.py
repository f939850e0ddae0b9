"""Evaluate a trained or converted CCNet on the config's evaluation split.

  python eval.py --config configs/synthetic.py --workdir /tmp/demo
  python eval.py --config configs/cityscapes.py --workdir runs/cs --model=best
  python eval.py --config configs/cityscapes.py --workdir runs/eval \
      --model=converted/ccnet_official --config.eval.scales=0.75,1.0,1.25 --config.eval.flip=True

``--model`` is 'latest' (the run's newest checkpoint), 'best', 'final', or the path of
a model directory written by ``python -m ccnet_jax.convert``. Metrics are printed and
written to ``WORKDIR/eval/metrics.json`` with prediction PNGs beside them.
"""

from absl import app, flags, logging
from ml_collections import config_flags

from ccnet_jax.cli import run_user_command
from ccnet_jax.evaluation.run import evaluate_from_workdir

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.")
_WORKDIR = flags.DEFINE_string("workdir", None, "The run's directory (outputs go to WORKDIR/eval).")
_MODEL = flags.DEFINE_string("model", "latest", "'latest', 'best', 'final' or a model directory.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.WARNING)  # Progress and results are printed; keep logs quiet.
  run_user_command(lambda: evaluate_from_workdir(_CONFIG.value, _WORKDIR.value, _MODEL.value))


if __name__ == "__main__":
  app.run(main)
