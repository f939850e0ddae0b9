"""The loaders' processes reuse freed example-sized buffers instead of faulting in new pages."""

import subprocess
import sys

from tests.processes import ROOT

_ALLOCATE = """
import resource, sys
from ccnet_jax.data.memory import keep_freed_memory
if sys.argv[1] == "keep":
  assert keep_freed_memory()
def example():  # a record read copies 8.4 MB of a Cityscapes example about three times
  blocks = [b"x" * (8 << 20) for _ in range(3)]
  del blocks
example()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
  example()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _page_faults(mode: str) -> int:
  done = subprocess.run(
      [sys.executable, "-c", _ALLOCATE, mode],
      cwd=ROOT,
      env={"PYTHONPATH": ROOT},
      capture_output=True,
      text=True,
      check=True,
  )
  return int(done.stdout)


def test_freed_blocks_are_reused():
  pages = 10 * 3 * (8 << 20) // 4096
  assert _page_faults("default") >= pages // 2  # glibc maps and faults in every block anew
  assert _page_faults("keep") < pages // 20
