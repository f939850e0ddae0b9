"""Eight host-platform devices for every test process, so sharding is tested on CPU, and a
compilation cache on disk shared by the test processes and the scripts they start.

Single-device code is unaffected: jit places on the first device unless told otherwise.
The flags must be set before jax initialises its backends, hence here.

The tests build the same small networks many times (every training run, evaluation and
subprocess traces and compiles its own steps), and on a 2-core machine compilation is most of
their time. JAX keys the cache on the program, the flags and its own version, so a cached
program is the one that would have been compiled. ``CCNET_JAX_TEST_CACHE=''`` turns it off.
"""

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
