"""What the memory-efficient criss-cross implementations keep for the backward pass."""

import json

import jax
import jax.numpy as jnp
import pytest

from ccnet_jax import ops
from tests.processes import run_python

SIZE = 97  # The paper's 769 x 769 crop at output stride 8.


def _residual_shapes(impl, height, width):
  q = jax.ShapeDtypeStruct((1, height, width, 8), jnp.float32)
  v = jax.ShapeDtypeStruct((1, height, width, 16), jnp.float32)
  attend = ops.get_criss_cross(impl)
  # The function jax.vjp returns is a pytree whose leaves are the residuals.
  vjp_fn = jax.eval_shape(lambda q, k, v: jax.vjp(attend, q, k, v)[1], q, q, v)
  return [leaf.shape for leaf in jax.tree.leaves(vjp_fn)]


@pytest.mark.parametrize("impl", ["einsum_recompute", "pallas"])
def test_no_attention_sized_residuals(impl):
  height, width = 11, 13
  attention_shapes = {(1, height, width, height), (1, height, width, width)}
  # The einsum path does keep them: the check can see them.
  assert attention_shapes & set(_residual_shapes("einsum", height, width))
  shapes = _residual_shapes(impl, height, width)
  assert not attention_shapes & set(shapes), shapes
  # q, k, v, the output and the (B, H, W) log-sum-exp at most; scalar residuals do not count.
  arrays = [s for s in shapes if s]
  assert sum(jnp.prod(jnp.array(s)) for s in arrays) <= (height * width * (8 + 8 + 16 + 16 + 1))


# Runs in a fresh process: attention_cost sets the XLA flag that makes the CPU
# memory analysis account for every buffer, which only takes effect before jax
# starts its backend.
_MEASURE = """
import json, sys
sys.path.insert(0, "benchmarks")
import cca_kernels
print(json.dumps(cca_kernels.memory_increments(%d, 1)))
"""


def _extra_training_memory_mb():
  result = run_python("-c", _MEASURE % SIZE, one_device=True)
  assert result.returncode == 0, result.stderr
  return json.loads(result.stdout.strip().splitlines()[-1])


def test_rcca_training_step_memory_against_non_local():
  """RCCA (R=2) training at 97x97x512: extra memory over the head without attention.

  Measured (CPU XLA analysis): non-local 1195 MB; einsum 195 MB, einsum_recompute
  184 MB; pallas in the interpreter 299 MB, with its kernels as opaque calls 143
  MB in the GPU layout (blocks read in place) and 223 MB in the TPU layout
  (transposed column copies). The paper's 1/20 is out of reach for any
  criss-cross op in this head: with the op replaced by an elementwise product of
  q, k and v the head still adds 97 MB (1/12 of non-local) -- the value conv,
  gamma * context and the two recurrences' outputs, kept for their gradients.
  """
  extra = _extra_training_memory_mb()
  non_local = extra["non_local"]
  assert extra["einsum_recompute"] < extra["einsum"]
  assert extra["einsum_recompute"] <= non_local / 6
  # Outside its kernels, the GPU layout holds no copy of q, k, v or the output
  # and no (B, H, W, H + W) buffer: less than any einsum path.
  assert extra["pallas_opaque_padded"] < extra["einsum_recompute"]
  assert extra["pallas_opaque_padded"] <= non_local / 8
  # The TPU layout adds transposed copies for its column branch.
  assert extra["pallas_opaque_padded"] < extra["pallas_opaque"] <= non_local / 5
  # The interpreter adds its grid loop's buffers on top.
  assert extra["pallas"] <= non_local / 3.5
