"""Train (and evaluate) CCNet.

  python train.py --config configs/synthetic.py --workdir /tmp/demo      # no download
  python train.py --config configs/cityscapes.py --workdir runs/cs
  python train.py --config configs/cityscapes.py --workdir runs/cs --config.loss.ohem=True

Any config field can be overridden as ``--config.a.b=value``. Rerunning a command on
a workdir with checkpoints resumes the run.
"""

from absl import app, flags, logging
from ml_collections import config_flags

from ccnet_jax.cli import run_user_command
from ccnet_jax.training.trainer import train_and_evaluate

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Checkpoints, logs and predictions go here.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.WARNING)  # Progress and results are printed; keep logs quiet.
  run_user_command(lambda: train_and_evaluate(_CONFIG.value, _WORKDIR.value))


if __name__ == "__main__":
  app.run(main)
