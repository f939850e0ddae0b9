"""The matmul form of criss-cross attention against the explicit-gather numpy reference."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import parameterized
from jax.test_util import check_grads

from ccnet_jax import ops
from ccnet_jax.ops.criss_cross_matmul import criss_cross_attention_matmul
from tests import reference
from tests.helpers import ATTENTION_SHAPES, BFLOAT16_ATOL, attention_inputs


class CrissCrossMatmulTest(parameterized.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.named_parameters(*ATTENTION_SHAPES)
  def test_matches_reference_float32(self, shape, value_channels):
    q, k, v = attention_inputs(shape, value_channels, scale=1.5)
    out = self.variant(criss_cross_attention_matmul)(q, k, v)
    chex.assert_type(out, jnp.float32)
    expected = reference.criss_cross_attention(q, k, v).astype(np.float32)
    chex.assert_trees_all_close(out, expected, atol=1e-5, rtol=1e-5)

  @parameterized.named_parameters(
      # bfloat16 in and out: the reference runs on the rounded inputs.
      ("bfloat16", (2, 5, 6, 8), 16, 1.0, jnp.bfloat16, BFLOAT16_ATOL),
      # Energies of ~30^2: a softmax without its shift would overflow float32.
      ("large_energies", (1, 4, 5, 3), 2, 30.0, jnp.float32, 1e-4),
  )
  def test_matches_reference_at_the_edges(self, shape, value_channels, scale, dtype, atol):
    q, k, v = (
        x.astype(dtype) for x in attention_inputs(shape, value_channels, seed=2, scale=scale)
    )
    out = criss_cross_attention_matmul(q, k, v)
    chex.assert_type(out, dtype)
    chex.assert_tree_all_finite(out)
    expected = reference.criss_cross_attention(*(x.astype(jnp.float32) for x in (q, k, v)))
    chex.assert_trees_all_close(out.astype(jnp.float32), expected.astype(np.float32), atol=atol)

  def test_gradients_match_finite_differences(self):
    q, k, v = attention_inputs((2, 3, 4, 2), 3, seed=6)
    check_grads(criss_cross_attention_matmul, (q, k, v), order=1, modes=("rev",), atol=2e-2)

  def test_any_size_under_symbolic_shapes(self):
    """Every shape is read from the inputs: one export serves all sizes (the ONNX route)."""
    shape = jax.export.symbolic_shape("b, h, w, 2")
    values = jax.ShapeDtypeStruct(shape[:3] + (3,), jnp.float32)
    exported = jax.export.export(jax.jit(criss_cross_attention_matmul))(
        jax.ShapeDtypeStruct(shape, jnp.float32), jax.ShapeDtypeStruct(shape, jnp.float32), values
    )
    for size, seed in (((1, 4, 6, 2), 7), ((2, 5, 3, 2), 8)):
      q, k, v = attention_inputs(size, 3, seed=seed)
      chex.assert_trees_all_close(
          exported.call(q, k, v),
          reference.criss_cross_attention(q, k, v).astype(np.float32),
          atol=1e-5,
          rtol=1e-5,
      )

  def test_is_the_matmul_implementation(self):
    self.assertIs(ops.get_criss_cross("matmul"), criss_cross_attention_matmul)
