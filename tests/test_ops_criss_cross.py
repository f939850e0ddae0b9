"""criss_cross_attention against the explicit-gather numpy reference."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized
from jax.test_util import check_grads

from ccnet_jax import ops
from ccnet_jax.ops import criss_cross_attention
from tests import numerics, reference
from tests.helpers import ATTENTION_SHAPES, attention_inputs

# float32 results against the float64 loops, allowed FLOAT32_FACTOR x the same loops'
# error in float32 (tests/numerics.py). The einsum sums in another order than the loops
# (and XLA may reassociate); measured up to 1.3x (both XLA configurations of README's test
# command).
FLOAT32_FACTOR = 4

# bfloat16 results against the float64 loops on the same (rounded) inputs, allowed
# BFLOAT16_FACTOR x one rounding of the true result to bfloat16: the einsum rounds the
# weights and the output to bfloat16 (2^-9 relative each). Measured up to 1.3x.
BFLOAT16_FACTOR = 4


def _bfloat16_rounding(x):
  return np.asarray(jnp.asarray(x, jnp.bfloat16), np.float64)


@pytest.mark.numeric
class CrissCrossAttentionTest(parameterized.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.named_parameters(*ATTENTION_SHAPES)
  def test_matches_reference_float32(self, shape, value_channels):
    q, k, v = attention_inputs(shape, value_channels, scale=1.5)
    out, attention = self.variant(
        lambda q, k, v: criss_cross_attention(q, k, v, return_attention=True)
    )(q, k, v)
    truth = reference.criss_cross_attention(q, k, v, return_attention=True)
    loops = reference.criss_cross_attention(q, k, v, return_attention=True, dtype=np.float32)
    chex.assert_shape(out, v.shape)
    chex.assert_type(out, jnp.float32)
    numerics.assert_as_accurate_as((out, attention), loops, truth, factor=FLOAT32_FACTOR)

  def test_attention_rows_sum_to_one_and_mask_the_pixel_itself(self):
    q, k, v = attention_inputs((2, 6, 4, 3), 2, seed=1)
    _, attention = criss_cross_attention(q, k, v, return_attention=True)
    np.testing.assert_allclose(
        attention.sum(-1), 1.0, rtol=0, atol=numerics.softmax_sum_tolerance(6 + 4)
    )
    own_column_entry = jnp.take_along_axis(
        attention[..., :6], jnp.arange(6)[None, :, None, None], axis=-1
    )
    np.testing.assert_array_equal(own_column_entry, 0.0)

  @chex.variants(with_jit=True, without_jit=True)
  def test_bfloat16(self):
    q, k, v = (x.astype(jnp.bfloat16) for x in attention_inputs((2, 5, 6, 8), 16, seed=2))
    out = self.variant(criss_cross_attention)(q, k, v)
    chex.assert_type(out, jnp.bfloat16)
    truth = reference.criss_cross_attention(*(np.asarray(x, np.float32) for x in (q, k, v)))
    numerics.assert_as_accurate_as(out, _bfloat16_rounding(truth), truth, factor=BFLOAT16_FACTOR)

  def test_large_energies_stay_finite(self):
    # A naive exp would overflow in float32; the shifted softmax must not.
    q, k, v = attention_inputs((1, 4, 5, 3), 2, seed=3, scale=30.0)
    out = criss_cross_attention(q, k, v)
    chex.assert_tree_all_finite(out)
    numerics.assert_as_accurate_as(
        out,
        reference.criss_cross_attention(q, k, v, dtype=np.float32),
        reference.criss_cross_attention(q, k, v),
        factor=FLOAT32_FACTOR,
    )

  def test_gradients_match_finite_differences_of_the_reference(self):
    """In float64: the autodiff of the einsum against central differences of the loops.

    With a step of 1e-6 the differences err by ~1e-12 (truncation, h^2) plus ~1e-10
    (the loss's float64 rounding over 2h); 1e-8 of the largest gradient leaves 100x.
    float32 gradients are compared with float64 in test_ops_pallas.py.
    """
    q, k, v = attention_inputs((1, 3, 4, 2), 3, seed=4)
    cotangent = np.asarray(jax.random.normal(jax.random.key(5), v.shape), np.float64)
    inputs = [np.asarray(x, np.float64) for x in (q, k, v)]

    def reference_loss(q, k, v):
      return float(np.sum(reference.criss_cross_attention(q, k, v) * cotangent))

    with jax.enable_x64(True):
      grads = jax.grad(
          lambda q, k, v: jnp.sum(criss_cross_attention(q, k, v) * cotangent), argnums=(0, 1, 2)
      )(*inputs)
      grads = [np.asarray(g) for g in grads]
    eps = 1e-6
    for index, grad in enumerate(grads):
      self.assertEqual(grad.dtype, np.float64)
      numeric = np.zeros_like(inputs[index])
      for position in np.ndindex(inputs[index].shape):
        plus = [x.copy() for x in inputs]
        minus = [x.copy() for x in inputs]
        plus[index][position] += eps
        minus[index][position] -= eps
        numeric[position] = (reference_loss(*plus) - reference_loss(*minus)) / (2 * eps)
      np.testing.assert_allclose(grad, numeric, rtol=0, atol=1e-8 * np.abs(numeric).max())

  def test_check_grads_forward_and_reverse(self):
    """JAX's own check, in float64, at its default tolerances for float64."""
    q, k, v = attention_inputs((2, 3, 4, 2), 3, seed=6)
    with jax.enable_x64(True):
      inputs = [jnp.asarray(x, jnp.float64) for x in (q, k, v)]
      check_grads(criss_cross_attention, inputs, order=1, modes=("fwd", "rev"))

  def test_vmap_over_an_extra_axis(self):
    q, k, v = attention_inputs((3, 4, 5, 2), 3, seed=7)
    batched = jax.vmap(criss_cross_attention)(q[:, None], k[:, None], v[:, None])
    numerics.assert_as_accurate_as(
        batched[:, 0],
        reference.criss_cross_attention(q, k, v, dtype=np.float32),
        reference.criss_cross_attention(q, k, v),
        factor=FLOAT32_FACTOR,
    )

  def test_shape_errors_name_the_arrays(self):
    q, k, v = attention_inputs((1, 4, 5, 2), 3)
    with pytest.raises(ValueError, match="q and k must have the same shape"):
      criss_cross_attention(q, k[:, :3], v)
    with pytest.raises(ValueError, match="v must share"):
      criss_cross_attention(q, k, v[:, :3])
    with pytest.raises(ValueError, match="rank 4"):
      criss_cross_attention(q[0], k[0], v[0])


class ImplementationChoiceTest(parameterized.TestCase):

  @parameterized.parameters(
      ("cpu", jnp.float32, "einsum"),
      ("cpu", jnp.bfloat16, "einsum"),
      # Measured on an H200 (README): the fused kernel wins in bfloat16 only.
      ("gpu", jnp.bfloat16, "pallas"),
      ("gpu", jnp.float32, "einsum"),
      ("tpu", jnp.bfloat16, "einsum"),  # Not measured: the reference.
  )
  def test_auto_runs_what_measured_fastest(self, platform, dtype, expected):
    self.assertEqual(ops.fastest_criss_cross(platform, dtype), expected)

  def test_auto_on_cpu_computes_the_einsum(self):
    q, k, v = (jax.random.normal(jax.random.key(i), (1, 5, 6, c)) for i, c in enumerate((4, 4, 8)))
    np.testing.assert_array_equal(
        ops.get_criss_cross("auto")(q, k, v), ops.criss_cross_attention(q, k, v)
    )

  def test_unknown_name_says_what_exists(self):
    with pytest.raises(ValueError, match="model.cca_impl='cuda'.*einsum"):
      ops.get_criss_cross("cuda")


@pytest.mark.numeric
class NonLocalAttentionTest(parameterized.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.named_parameters(("square", (2, 4, 4, 3), 5), ("wide", (1, 3, 6, 2), 4))
  def test_matches_reference(self, shape, value_channels):
    q, k, v = attention_inputs(shape, value_channels, seed=8)
    out = self.variant(ops.non_local_attention)(q, k, v)
    numerics.assert_as_accurate_as(
        out,
        reference.non_local_attention(q, k, v, dtype=np.float32),
        reference.non_local_attention(q, k, v),
        factor=FLOAT32_FACTOR,
    )

  def test_attention_covers_every_pixel(self):
    q, k, v = attention_inputs((1, 3, 4, 2), 2, seed=9)
    _, attention = ops.non_local_attention(q, k, v, return_attention=True)
    chex.assert_shape(attention, (1, 3, 4, 3, 4))
    np.testing.assert_allclose(
        attention.sum((-1, -2)), 1.0, rtol=0, atol=numerics.softmax_sum_tolerance(3 * 4)
    )
    self.assertTrue(bool(jnp.all(attention > 0)))
