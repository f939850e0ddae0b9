"""Evaluate a trained or converted CCNet on the config's evaluation split.

  python eval.py --config configs/synthetic.py                  # the run in runs/synthetic/
  python eval.py --config configs/cityscapes.py --model=best
  python eval.py --config configs/cityscapes.py --workdir runs/eval \\
      --model=converted/ccnet_official --config.eval.scales=0.75,1.0,1.25 --config.eval.flip=True

``--model`` is 'latest' (the run's newest checkpoint), 'best', 'final' (the run's model/),
or a path ``ccnet_jax.loading.load_model`` takes: a model directory (one written by
``python -m ccnet_jax.convert``), another run's workdir or checkpoints/. The workdir
defaults to runs/<config file name>/, as for train.py. Metrics are printed and written to
``WORKDIR/eval/metrics.json`` with prediction PNGs beside them.
"""

from ccnet_jax import interrupts

if __name__ == "__main__":  # First: a signal while the libraries below load ends in one line.
  interrupts.install()

from absl import flags

from ccnet_jax import cli
from ccnet_jax.evaluation.run import evaluate_from_workdir

_EXPERIMENT = cli.define_experiment_flags(
    "The run's directory; outputs go to WORKDIR/eval (default: runs/<config name>)."
)
_MODEL = flags.DEFINE_string(
    "model", "latest", "'latest', 'best', 'final' or a model directory (or another run)."
)

if __name__ == "__main__":
  _EXPERIMENT.run(
      lambda config, workdir: evaluate_from_workdir(config, workdir, _MODEL.value),
      kept="the files written so far are complete (metrics.json comes last); none is half-written.",
  )
