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
from tests import reference
from tests.helpers import ATTENTION_SHAPES, BFLOAT16_ATOL, attention_inputs


class CrissCrossAttentionTest(parameterized.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.named_parameters(*ATTENTION_SHAPES)
  def test_matches_reference_float32(self, shape, value_channels):
    q, k, v = attention_inputs(shape, value_channels, scale=1.5)
    out, attention = self.variant(
        lambda q, k, v: criss_cross_attention(q, k, v, return_attention=True)
    )(q, k, v)
    expected, expected_attention = reference.criss_cross_attention(q, k, v, return_attention=True)
    chex.assert_shape(out, v.shape)
    chex.assert_type(out, jnp.float32)
    chex.assert_trees_all_close(out, expected.astype(np.float32), atol=1e-5, rtol=1e-5)
    chex.assert_trees_all_close(attention, expected_attention.astype(np.float32), atol=1e-6)

  def test_attention_rows_sum_to_one_and_mask_the_pixel_itself(self):
    q, k, v = attention_inputs((2, 6, 4, 3), 2, seed=1)
    _, attention = criss_cross_attention(q, k, v, return_attention=True)
    chex.assert_trees_all_close(attention.sum(-1), jnp.ones((2, 6, 4)), atol=1e-6)
    own_column_entry = jnp.take_along_axis(
        attention[..., :6], jnp.arange(6)[None, :, None, None], axis=-1
    )
    np.testing.assert_array_equal(own_column_entry, 0.0)

  @chex.variants(with_jit=True, without_jit=True)
  def test_bfloat16(self):
    q, k, v = (x.astype(jnp.bfloat16) for x in attention_inputs((2, 5, 6, 8), 16, seed=2))
    out = self.variant(criss_cross_attention)(q, k, v)
    chex.assert_type(out, jnp.bfloat16)
    expected = reference.criss_cross_attention(
        *(np.asarray(x.astype(jnp.float32)) for x in (q, k, v))
    )
    chex.assert_trees_all_close(
        out.astype(jnp.float32), expected.astype(np.float32), atol=BFLOAT16_ATOL
    )

  def test_large_energies_stay_finite(self):
    # A naive exp would overflow in float32; the shifted softmax must not.
    q, k, v = attention_inputs((1, 4, 5, 3), 2, seed=3, scale=30.0)
    out = criss_cross_attention(q, k, v)
    chex.assert_tree_all_finite(out)
    chex.assert_trees_all_close(
        out, reference.criss_cross_attention(q, k, v).astype(np.float32), atol=1e-4
    )

  def test_gradients_match_finite_differences_of_the_reference(self):
    q, k, v = attention_inputs((1, 3, 4, 2), 3, seed=4)
    cotangent = np.asarray(jax.random.normal(jax.random.key(5), v.shape), np.float64)

    def reference_loss(q, k, v):
      return float(np.sum(reference.criss_cross_attention(q, k, v) * cotangent))

    grads = jax.grad(
        lambda q, k, v: jnp.sum(criss_cross_attention(q, k, v) * cotangent), argnums=(0, 1, 2)
    )(q, k, v)
    inputs = [np.asarray(x, np.float64) for x in (q, k, v)]
    eps = 1e-6
    for index, grad in enumerate(grads):
      numeric = np.zeros_like(inputs[index])
      for position in np.ndindex(inputs[index].shape):
        plus = [x.copy() for x in inputs]
        minus = [x.copy() for x in inputs]
        plus[index][position] += eps
        minus[index][position] -= eps
        numeric[position] = (reference_loss(*plus) - reference_loss(*minus)) / (2 * eps)
      chex.assert_trees_all_close(grad, numeric.astype(np.float32), atol=1e-4, rtol=1e-4)

  def test_check_grads_forward_and_reverse(self):
    q, k, v = attention_inputs((2, 3, 4, 2), 3, seed=6)
    check_grads(criss_cross_attention, (q, k, v), order=1, modes=("fwd", "rev"), atol=2e-2)

  def test_vmap_over_an_extra_axis(self):
    q, k, v = attention_inputs((3, 4, 5, 2), 3, seed=7)
    batched = jax.vmap(criss_cross_attention)(q[:, None], k[:, None], v[:, None])
    chex.assert_trees_all_close(batched[:, 0], criss_cross_attention(q, k, v), atol=1e-6)

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


class NonLocalAttentionTest(parameterized.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.named_parameters(("square", (2, 4, 4, 3), 5), ("wide", (1, 3, 6, 2), 4))
  def test_matches_reference(self, shape, value_channels):
    q, k, v = attention_inputs(shape, value_channels, seed=8)
    out = self.variant(ops.non_local_attention)(q, k, v)
    expected = reference.non_local_attention(q, k, v)
    chex.assert_trees_all_close(out, expected.astype(np.float32), atol=1e-5, rtol=1e-5)

  def test_attention_covers_every_pixel(self):
    q, k, v = attention_inputs((1, 3, 4, 2), 2, seed=9)
    _, attention = ops.non_local_attention(q, k, v, return_attention=True)
    chex.assert_shape(attention, (1, 3, 4, 3, 4))
    chex.assert_trees_all_close(attention.sum((-1, -2)), jnp.ones((1, 3, 4)), atol=1e-6)
    self.assertTrue(bool(jnp.all(attention > 0)))
