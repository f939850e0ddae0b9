"""Eight host-platform devices for every test process, so sharding is tested on CPU.

Single-device code is unaffected: jit places on the first device unless told otherwise.
The flag must be set before jax initialises its backends, hence here.
"""

import os

_DEVICES_FLAG = "--xla_force_host_platform_device_count=8"
if _DEVICES_FLAG.split("=")[0] not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {_DEVICES_FLAG}".strip()
