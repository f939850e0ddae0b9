"""Train (and evaluate) CCNet.

  python train.py --config configs/synthetic.py                 # no download; runs/synthetic/
  python train.py --config configs/cityscapes.py                # runs/cityscapes/
  python train.py --config configs/cityscapes.py --workdir runs/cs_ohem --config.loss.ohem=True

Any config field can be overridden as ``--config.a.b=value`` (``--print_config`` lists
them). The workdir defaults to runs/<config file name>/; rerunning a command on a
workdir with checkpoints resumes the run.
"""

from ccnet_jax import interrupts

if __name__ == "__main__":  # First: a signal while the libraries below load ends in one line.
  interrupts.install()

from ccnet_jax import cli
from ccnet_jax.trainer import train_and_evaluate

_EXPERIMENT = cli.define_experiment_flags(
    "Checkpoints, logs and predictions go here (default: runs/<config name>)."
)

if __name__ == "__main__":
  _EXPERIMENT.run(
      train_and_evaluate,
      kept="the last complete checkpoint is kept; run the same command again to resume from it.",
  )
