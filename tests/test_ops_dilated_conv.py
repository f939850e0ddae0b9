"""The space-to-batch dilated convolutions against lax.conv_general_dilated(rhs_dilation=d).

Values, input gradients and weight gradients: exact in float64 (to 1e-12 of the largest
entry), and in float32 no further from the float64 truth than XLA's own dilated conv is.
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized
from jax import lax

from ccnet_jax.ops.dilated_conv import get_dilated_conv

NHWC = ("NHWC", "HWIO", "NHWC")
FORMS = ("space_to_batch", "space_to_batch_wgrad")
# (height, width, batch, dilation, stride): odd and even maps, batch 1-3, d = 2 and 4.
GEOMETRIES = (
    (97, 97, 1, 2, 1),
    (65, 34, 2, 4, 1),
    (34, 65, 3, 2, 2),
    (97, 65, 2, 4, 2),
    (34, 34, 1, 4, 4),
)


def _reference(x, w, stride, dilation):
  pad = ((dilation, dilation),) * 2
  return lax.conv_general_dilated(
      x, w, (stride,) * 2, pad, rhs_dilation=(dilation,) * 2, dimension_numbers=NHWC
  )


def _form(name):
  conv = get_dilated_conv(name)

  def apply(x, w, stride, dilation):
    pad = ((dilation, dilation),) * 2
    return conv(x, w, (stride,) * 2, pad, rhs_dilation=(dilation,) * 2, dimension_numbers=NHWC)

  return apply


def _value_and_grads(conv, x, w, d_out, stride, dilation):
  """(y, dx, dw) of ``conv`` for the output gradient ``d_out``."""
  y, vjp = jax.vjp(lambda x, w: conv(x, w, stride, dilation), x, w)
  return (y, *vjp(d_out))


def _inputs(height, width, batch, stride, dilation, dtype, seed=0):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(batch, height, width, 5))
  w = rng.normal(size=(3, 3, 5, 6))
  out_shape = jax.eval_shape(
      lambda x, w: _reference(x, w, stride, dilation),
      jax.ShapeDtypeStruct(x.shape, jnp.float64),
      jax.ShapeDtypeStruct(w.shape, jnp.float64),
  ).shape
  d_out = rng.normal(size=out_shape)
  return tuple(jnp.asarray(a, dtype) for a in (x, w, d_out))


class DilatedConvTest(parameterized.TestCase):

  @parameterized.product(form=FORMS, geometry=GEOMETRIES)
  def test_float64_equals_lax(self, form, geometry):
    height, width, batch, dilation, stride = geometry
    with jax.enable_x64(True):
      x, w, d_out = _inputs(height, width, batch, stride, dilation, jnp.float64)
      expected = _value_and_grads(_reference, x, w, d_out, stride, dilation)
      got = jax.jit(_value_and_grads, static_argnums=(0, 4, 5))(
          _form(form), x, w, d_out, stride, dilation
      )
      for name, g, e in zip(("value", "input grad", "weight grad"), got, expected):
        chex.assert_equal_shape((g, e))
        error = float(jnp.max(jnp.abs(g - e)) / jnp.max(jnp.abs(e)))
        self.assertLess(error, 1e-12, f"{form} {geometry}: {name}")

  @parameterized.product(form=FORMS, geometry=GEOMETRIES[:2])
  def test_float32_within_rounding_noise(self, form, geometry):
    """float32 against the float64 truth, as accurate as a float32 sum of its terms can be.

    An entry sums N products (value: 9 x 5 input channels, input grad: 9 x 6 output
    channels, weight grad: every output position of every image); rounding errors of
    a float32 sum grow as eps * sqrt(N) of the terms' scale. XLA's own float32 conv
    stays within the same bound.
    """
    height, width, batch, dilation, stride = geometry
    with jax.enable_x64(True):
      inputs = _inputs(height, width, batch, stride, dilation, jnp.float64)
      truth = _value_and_grads(_reference, *inputs, stride, dilation)
      single = tuple(a.astype(jnp.float32) for a in inputs)
      out_positions = batch * truth[0].shape[1] * truth[0].shape[2]
      terms = {"value": 9 * 5, "input grad": 9 * 6, "weight grad": out_positions}
      for conv, name in ((_form(form), form), (_reference, "lax")):
        got = jax.jit(_value_and_grads, static_argnums=(0, 4, 5))(conv, *single, stride, dilation)
        for (what, count), g, e in zip(terms.items(), got, truth):
          chex.assert_type(g, jnp.float32)
          error = float(jnp.max(jnp.abs(g.astype(jnp.float64) - e)) / jnp.max(jnp.abs(e)))
          bound = 4 * float(jnp.finfo(jnp.float32).eps) * np.sqrt(count)
          self.assertLess(error, bound, f"{name} {geometry}: {what}")

  def test_stride_that_does_not_divide_the_dilation_is_lax(self):
    x, w, d_out = _inputs(34, 34, 2, 3, 2, jnp.float32)
    expected = _value_and_grads(_reference, x, w, d_out, 3, 2)
    got = _value_and_grads(_form("space_to_batch"), x, w, d_out, 3, 2)
    chex.assert_trees_all_equal(got, expected)

  def test_auto_takes_the_phases_for_gpu_only(self):
    """Lowered for CUDA the weight gradient is a convolution of the folded phases."""
    conv = _form("auto")
    x = jax.ShapeDtypeStruct((2, 33, 33, 5), jnp.float32)
    w = jax.ShapeDtypeStruct((3, 3, 5, 6), jnp.float32)
    grad = jax.jit(jax.grad(lambda x, w: conv(x, w, 1, 2).sum(), argnums=1))

    def lowered_text(platform):
      return grad.trace(x, w).lower(lowering_platforms=(platform,)).as_text()

    folded = "tensor<8x"  # 2 images x 2 x 2 phases
    self.assertIn(folded, lowered_text("cuda"))
    self.assertNotIn(folded, lowered_text("cpu"))
    self.assertNotIn(folded, lowered_text("tpu"))

  def test_unknown_form_names_the_field(self):
    with pytest.raises(ValueError, match="model.dilated_conv='dilated'"):
      get_dilated_conv("dilated")


def _tiny_ccnet_config(form: str):
  from ccnet_jax.models.registry import model_config

  config = model_config("ccnet_r101_official", num_classes=3, dtype="float64", dilated_conv=form)
  config.backbone.update(depth=18, base_width=8)
  config.head.update(out_channels=8)
  config.aux.channels = 8
  return config


def test_the_model_computes_its_dilated_convs_in_the_form_named():
  """model.dilated_conv reaches every dilated conv of the backbone; the logits do not move."""
  from flax import nnx

  from ccnet_jax.models.layers import Conv2d
  from ccnet_jax.models.registry import build_model

  images = np.random.default_rng(0).normal(size=(2, 33, 33, 3))
  logits = {}
  with jax.enable_x64(True):
    for form in ("lax", "space_to_batch"):
      model = build_model(_tiny_ccnet_config(form), seed=0)
      dilated = [
          m
          for _, m in nnx.iter_graph(model)
          if isinstance(m, Conv2d) and np.max(m.kernel_dilation) > 1
      ]
      assert len(dilated) == 8  # layer3 and layer4 of ResNet-18: 2 blocks x 2 convs each.
      assert all(m.conv_general_dilated is get_dilated_conv(form) for m in dilated)
      model.eval()
      logits[form] = np.asarray(jax.jit(lambda x, model=model: model(x)[0])(images))
  assert logits["lax"].dtype == np.float64
  scale = np.max(np.abs(logits["lax"]))
  assert np.max(np.abs(logits["space_to_batch"] - logits["lax"])) < 1e-12 * scale
