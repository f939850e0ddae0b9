"""Eight host-platform devices for every test process, so sharding is tested on CPU, and a
compilation cache on disk shared by the test processes and the scripts they start.

Single-device code is unaffected: jit places on the first device unless told otherwise.
The flags must be set before jax initialises its backends, hence here.

The tests build the same small networks many times (every training run, evaluation and
subprocess traces and compiles its own steps), and on a 2-core machine compilation is most of
their time. JAX keys the cache on the program, the flags and its own version, so a cached
program is the one that would have been compiled. ``CCNET_JAX_TEST_CACHE=''`` turns it off.
"""

import collections
import os
import tempfile

_DEVICES_FLAG = "--xla_force_host_platform_device_count=8"
if _DEVICES_FLAG.split("=")[0] not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {_DEVICES_FLAG}".strip()

_CACHE = os.environ.setdefault(
    "CCNET_JAX_TEST_CACHE", os.path.join(tempfile.gettempdir(), "ccnet_jax_test_compilation_cache")
)
if _CACHE:
  os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", _CACHE)
  # Below JAX's 1 s default, so that the many programs of a fraction of a second are shared too.
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")


import pytest  # pylint: disable=g-import-not-at-top,wrong-import-position

SavedModel = collections.namedtuple(
    "SavedModel", ["workdir", "directory", "config", "model", "preprocessing"]
)


@pytest.fixture(scope="session")
def saved_model(tmp_path_factory):
  """A tiny random CCNet predicting the synthetic data's 6 classes, saved as the final model
  of a workdir, with a BGR normalisation: ``(workdir, directory, config, model,
  preprocessing)``. Read-only: tests that change a model directory write their own."""
  from ccnet_jax.data.labels import SYNTHETIC  # pylint: disable=import-outside-toplevel
  from ccnet_jax.models import model_dir  # pylint: disable=import-outside-toplevel
  from tests.helpers import PREPROCESSING, randomised, tiny_model_config  # pylint: disable=import-outside-toplevel

  config = tiny_model_config(num_classes=SYNTHETIC.num_classes)
  model = randomised(config, seed=7)
  workdir = tmp_path_factory.mktemp("saved_model")
  directory = workdir / "model"
  model_dir.save_model(directory, model, config, preprocessing=PREPROCESSING)
  return SavedModel(workdir, directory, config, model, PREPROCESSING)
