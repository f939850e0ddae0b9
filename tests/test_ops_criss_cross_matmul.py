"""The matmul form of criss-cross attention against the explicit-gather numpy reference.

float32 results are held to the float64 loops and allowed FACTOR x the same loops' error in
float32 (tests/numerics.py); the matmuls sum in another order than the loops. bfloat16 results
are held to the float64 loops on the same (rounded) inputs and allowed FACTOR x one rounding
of the true result to bfloat16 (the weights and the output are rounded to bfloat16, 2^-9
relative each). Measured worst ratios beside FACTOR (default flags and README's second XLA
configuration).
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized
from jax.test_util import check_grads

from ccnet_jax import ops
from ccnet_jax.ops.criss_cross_matmul import criss_cross_attention_matmul
from tests import numerics, reference
from tests.helpers import ATTENTION_SHAPES, attention_inputs

FACTOR = 4  # Measured up to 1.33x (bfloat16) and 1.08x (float32), both configurations.


def _bfloat16_rounding(x):
  return np.asarray(jnp.asarray(x, jnp.bfloat16), np.float64)


def _as_accurate_as_the_loops(out, q, k, v):
  numerics.assert_as_accurate_as(
      out,
      reference.criss_cross_attention(q, k, v, dtype=np.float32),
      reference.criss_cross_attention(q, k, v),
      factor=FACTOR,
  )


@pytest.mark.numeric
class CrissCrossMatmulTest(parameterized.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.named_parameters(*ATTENTION_SHAPES)
  def test_matches_reference_float32(self, shape, value_channels):
    q, k, v = attention_inputs(shape, value_channels, scale=1.5)
    out = self.variant(criss_cross_attention_matmul)(q, k, v)
    chex.assert_type(out, jnp.float32)
    _as_accurate_as_the_loops(out, q, k, v)

  def test_bfloat16(self):
    """bfloat16 in and out: the truth runs on the rounded inputs."""
    q, k, v = (x.astype(jnp.bfloat16) for x in attention_inputs((2, 5, 6, 8), 16, seed=2))
    out = criss_cross_attention_matmul(q, k, v)
    chex.assert_type(out, jnp.bfloat16)
    truth = reference.criss_cross_attention(*(np.asarray(x, np.float32) for x in (q, k, v)))
    numerics.assert_as_accurate_as(out, _bfloat16_rounding(truth), truth, factor=FACTOR)

  def test_large_energies_stay_finite(self):
    """Energies of ~30^2: a softmax without its shift would overflow float32."""
    q, k, v = attention_inputs((1, 4, 5, 3), 2, seed=2, scale=30.0)
    out = criss_cross_attention_matmul(q, k, v)
    chex.assert_tree_all_finite(out)
    _as_accurate_as_the_loops(out, q, k, v)

  def test_check_grads_forward_and_reverse(self):
    """JAX's own check, in float64, at its default tolerances for float64."""
    q, k, v = attention_inputs((2, 3, 4, 2), 3, seed=6)
    with jax.enable_x64(True):
      inputs = [jnp.asarray(x, jnp.float64) for x in (q, k, v)]
      check_grads(criss_cross_attention_matmul, inputs, order=1, modes=("fwd", "rev"))

  def test_float32_gradients_as_accurate_as_the_einsum(self):
    """Input gradients against the float64 einsum's, allowed FACTOR x the float32 einsum's
    error (its gradient is checked against the loops in test_ops_criss_cross.py)."""
    q, k, v = attention_inputs((2, 3, 4, 2), 3, seed=6)
    cotangent = jax.random.normal(jax.random.key(5), v.shape)

    def gradients(attention, *inputs):
      return jax.vjp(attention, *inputs)[1](cotangent.astype(inputs[0].dtype))

    with jax.enable_x64(True):
      truth = gradients(ops.criss_cross_attention, *numerics.in_float64((q, k, v)))
    numerics.assert_as_accurate_as(
        gradients(criss_cross_attention_matmul, q, k, v),
        gradients(ops.criss_cross_attention, q, k, v),
        truth,
        factor=FACTOR,
    )

  def test_any_size_under_symbolic_shapes(self):
    """Every shape is read from the inputs: one export serves all sizes (the ONNX route)."""
    shape = jax.export.symbolic_shape("b, h, w, 2")
    values = jax.ShapeDtypeStruct(shape[:3] + (3,), jnp.float32)
    exported = jax.export.export(jax.jit(criss_cross_attention_matmul))(
        jax.ShapeDtypeStruct(shape, jnp.float32), jax.ShapeDtypeStruct(shape, jnp.float32), values
    )
    for size, seed in (((1, 4, 6, 2), 7), ((2, 5, 3, 2), 8)):
      q, k, v = attention_inputs(size, 3, seed=seed)
      _as_accurate_as_the_loops(exported.call(q, k, v), q, k, v)

  def test_is_the_matmul_implementation(self):
    self.assertIs(ops.get_criss_cross("matmul"), criss_cross_attention_matmul)
