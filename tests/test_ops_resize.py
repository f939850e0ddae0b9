"""resize_bilinear against torch.nn.functional.interpolate (both align_corners modes)."""

import chex
import jax
import numpy as np
import pytest

from ccnet_jax.ops.resize import resize_bilinear
from tests import numerics

torch = pytest.importorskip("torch")


@pytest.mark.numeric
@pytest.mark.parametrize("align_corners", [True, False])
@pytest.mark.parametrize(
    "in_size,out_size",
    [
        ((13, 13), (97, 97)),
        ((12, 17), (96, 128)),
        ((97, 97), (13, 13)),
        ((7, 9), (7, 9)),
        ((1, 5), (4, 20)),
        ((5, 6), (1, 1)),
    ],
)
def test_matches_torch_interpolate(in_size, out_size, align_corners):
  """Against torch in float64, allowed 4x torch float32's own error (tests/numerics.py):
  measured up to 0.77x (both XLA configurations of README's test command). A pixel-centre
  or corner convention off by half a pixel errs by the values' own scale."""
  x = np.random.default_rng(0).normal(size=(2, *in_size, 3)).astype(np.float32)

  def torch_resize(dtype):
    return (
        torch.nn.functional.interpolate(
            torch.from_numpy(x).to(dtype).permute(0, 3, 1, 2),
            size=out_size,
            mode="bilinear",
            align_corners=align_corners,
        )
        .permute(0, 2, 3, 1)
        .numpy()
    )

  actual = jax.jit(resize_bilinear, static_argnums=1, static_argnames="align_corners")(
      x, out_size, align_corners=align_corners
  )
  chex.assert_shape(actual, (2, *out_size, 3))
  numerics.assert_as_accurate_as(
      actual, torch_resize(torch.float32), torch_resize(torch.float64), factor=4
  )


def test_bfloat16_input_computes_in_float32():
  x = np.ones((1, 3, 3, 2), np.float32)
  y = resize_bilinear(jax.numpy.asarray(x, jax.numpy.bfloat16), (5, 5))
  assert y.dtype == jax.numpy.float32
  np.testing.assert_allclose(y, 1.0)
