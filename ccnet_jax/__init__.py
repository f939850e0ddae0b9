"""ccnet-jax: CCNet (criss-cross attention for semantic segmentation) in JAX and Flax NNX."""

import sys

__version__ = "0.1.0"

# `python -m ccnet_jax.COMMAND` imports this first (sys.argv[0] is '-m' until the command's
# module is found): a signal while the command's libraries load ends it in one line.
if sys.argv[:1] == ["-m"]:
  from ccnet_jax import interrupts

  interrupts.install()
