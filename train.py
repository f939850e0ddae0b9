"""Train (and evaluate) CCNet.

  python train.py --config configs/synthetic.py                 # no download; runs/synthetic/
  python train.py --config configs/cityscapes.py                # runs/cityscapes/
  python train.py --config configs/cityscapes.py --workdir runs/cs_ohem --config.loss.ohem=True

Any config field can be overridden as ``--config.a.b=value`` (``--print_config`` lists
them). The workdir defaults to runs/<config file name>/; rerunning a command on a
workdir with checkpoints resumes the run.
"""

from absl import app, flags
from ml_collections import config_flags

from ccnet_jax.cli import CONFIG_HELP, default_workdir, parse_flags, print_config, run_user_command
from ccnet_jax.trainer import train_and_evaluate

_CONFIG = config_flags.DEFINE_config_file("config", None, CONFIG_HELP)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Checkpoints, logs and predictions go here (default: runs/<config name>)."
)
_PRINT_CONFIG = flags.DEFINE_bool("print_config", False, "Print every config field and exit.")
flags.mark_flags_as_required(["config"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if _PRINT_CONFIG.value:
    print_config(_CONFIG.value)
    return
  workdir = default_workdir(_WORKDIR.value)
  run_user_command(lambda: train_and_evaluate(_CONFIG.value, workdir))


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
