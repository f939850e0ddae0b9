"""The Pallas kernel and the recomputing einsum path against the einsum reference.

On CPU the kernels run in the Pallas interpreter: these tests check what the
kernels compute, not how fast.
"""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from absl.testing import absltest, parameterized
from flax import nnx

from ccnet_jax import ops
from ccnet_jax.models.heads import RCCAHead
from ccnet_jax.models.registry import build_model
from ccnet_jax.ops.pallas import (
    TUNING_GRID,
    BlockSizes,
    criss_cross_attention_pallas,
    tuning_configurations,
)
from tests import numerics
from tests.helpers import tiny_model_config

IMPLEMENTATIONS = ("pallas", "einsum_recompute")

# float32 results are compared with the float64 einsum on the same inputs and allowed
# FLOAT32_FACTOR x the float32 einsum's own error (tests/numerics.py). The kernel's
# backward recomputes exp(s - lse) for energies s up to ~30 and sums
# delta = sum(dO * out) over C channels, so it rounds more than the einsum: measured
# up to 8.0x the einsum's error (every shape and tuning configuration here, both XLA
# configurations of README's test command). A wrong mask, block edge or
# branch errs by a fraction of the values, ~1e5x the einsum's error.
FLOAT32_FACTOR = 16

# bfloat16 results are compared with the float64 einsum on the same (rounded) inputs
# and allowed BFLOAT16_FACTOR x the bfloat16 einsum's error. The implementations round
# at different points (the kernel each branch's normalised weights, the einsum the
# joint ones, see BFloat16AccuracyTest); measured up to 2.5x.
BFLOAT16_FACTOR = 8


def _qkv(shape, value_channels, seed=0, dtype=jnp.float32):
  keys = jax.random.split(jax.random.key(seed), 4)
  q = 1.5 * jax.random.normal(keys[0], shape)
  k = 1.5 * jax.random.normal(keys[1], shape)
  v = jax.random.normal(keys[2], shape[:3] + (value_channels,))
  d_out = jax.random.normal(keys[3], v.shape)
  return q.astype(dtype), k.astype(dtype), v.astype(dtype), d_out.astype(dtype)


@jax.jit(static_argnums=0)
def _forward_and_grads(impl, q, k, v, d_out):
  attend = impl if callable(impl) else ops.get_criss_cross(impl)
  out, vjp = jax.vjp(attend, q, k, v)
  return (out,) + vjp(d_out)


def _float64_truth(inputs):
  """Output and input gradients of the einsum in float64, on the inputs as given."""
  with jax.enable_x64(True):
    inputs = [jnp.asarray(np.asarray(x, np.float64)) for x in inputs]
    return tuple(np.asarray(x) for x in _forward_and_grads("einsum", *inputs))


def _named(results):
  return dict(zip(("out", "dq", "dk", "dv"), results))


def _gpu_layout(block_sizes=BlockSizes()):
  """The kernels as Triton runs them (power-of-two blocks, masked edges), interpreted."""
  return functools.partial(
      criss_cross_attention_pallas, block_sizes=block_sizes, pad_to_power_of_two=True
  )


def _kernel_distinct(configurations):
  """One configuration per kernel the interpreter can tell apart.

  num_warps and num_stages are Triton compiler options: they leave the kernel
  the interpreter runs unchanged.
  """
  distinct = {}
  for sizes in configurations:
    distinct.setdefault((sizes.query_block, sizes.channel_slice), sizes)
  return list(distinct.values())


def _assert_float32_close(got, inputs):
  """Output and gradients against float64, as accurate as the float32 einsum (x FACTOR)."""
  for g in got:
    chex.assert_type(g, jnp.float32)
  reference = _forward_and_grads("einsum", *inputs)
  numerics.assert_as_accurate_as(
      _named(got), _named(reference), _named(_float64_truth(inputs)), factor=FLOAT32_FACTOR
  )


def _assert_bfloat16_close(got, inputs):
  """Against float64 on the same (rounded) inputs, as accurate as the bfloat16 einsum."""
  for g in got:
    chex.assert_type(g, jnp.bfloat16)
  reference = _forward_and_grads("einsum", *inputs)
  numerics.assert_as_accurate_as(
      _named(got), _named(reference), _named(_float64_truth(inputs)), factor=BFLOAT16_FACTOR
  )


@pytest.mark.numeric
class KernelMatchesEinsumTest(parameterized.TestCase):

  @parameterized.product(
      impl=IMPLEMENTATIONS,
      shape=[(1, 97, 97, 8), (2, 33, 65, 8), (2, 1, 21, 8), (2, 21, 1, 8), (1, 1, 1, 8)],
  )
  def test_forward_and_input_grads_float32(self, impl, shape):
    inputs = _qkv(shape, 16)
    _assert_float32_close(_forward_and_grads(impl, *inputs), inputs)

  @parameterized.parameters(*IMPLEMENTATIONS)
  def test_forward_and_input_grads_bfloat16(self, impl):
    inputs = _qkv((2, 17, 33, 8), 16, seed=1, dtype=jnp.bfloat16)
    _assert_bfloat16_close(_forward_and_grads(impl, *inputs), inputs)

  @parameterized.parameters((2, 1, 21), (2, 21, 1), (1, 1, 1), (1, 33, 65))
  def test_gpu_layout_edges_float32(self, batch, height, width):
    """Blocks past the array's edge: 1-pixel rows and columns (a fully masked
    column branch), odd lengths (33 -> 64 keys, 65 -> 128), C' 8 -> 16, C 20 -> 32.
    """
    inputs = _qkv((batch, height, width, 8), 20)
    _assert_float32_close(_forward_and_grads(_gpu_layout(), *inputs), inputs)

  @parameterized.parameters(*_kernel_distinct(tuning_configurations()))
  def test_every_tuning_configuration_float32(self, block_sizes):
    """Each swept configuration, as Triton would run it, against float64.

    65 rows (-> 128: one, two or four query blocks, a masked tail) by 5 columns
    (-> 16); C = 160 -> 256 in slices of 64 or 128, the last ones partly or
    wholly past the edge.
    """
    inputs = _qkv((1, 65, 5, 8), 160, seed=3)
    _assert_float32_close(_forward_and_grads(_gpu_layout(block_sizes), *inputs), inputs)

  @parameterized.parameters(*_kernel_distinct(tuning_configurations()))
  def test_every_tuning_configuration_bfloat16(self, block_sizes):
    inputs = _qkv((1, 65, 5, 8), 160, seed=4, dtype=jnp.bfloat16)
    _assert_bfloat16_close(_forward_and_grads(_gpu_layout(block_sizes), *inputs), inputs)

  def test_registered(self):
    self.assertIs(ops.get_criss_cross("pallas"), criss_cross_attention_pallas)
    self.assertIs(ops.get_criss_cross("einsum_recompute"), ops.criss_cross_attention_recompute)

  def test_bad_shapes_are_reported(self):
    q = jnp.zeros((1, 4, 4, 2))
    with self.assertRaisesRegex(ValueError, "v must share"):
      criss_cross_attention_pallas(q, q, jnp.zeros((1, 4, 5, 3)))


@pytest.mark.numeric
class BFloat16AccuracyTest(absltest.TestCase):

  def test_no_less_accurate_than_the_bfloat16_einsum(self):
    """Output and gradients against the float32 einsum on the same bfloat16 inputs.

    The truth's own error (float32, ~1e-6 relative) is negligible next to
    bfloat16's rounding (2^-9 relative per entry). Both implementations round
    their results to bfloat16 once; the einsum also rounds the attention weights
    before the products, which the kernel does not (its products use the rounded
    weights plus their rounding error, see _weighted_sum, and its backward reads
    an unrounded output). So the kernel's RMS error is at most the einsum's
    (measured: 0.5-0.8x), and its largest error at most the einsum's plus one
    rounding of the largest entry (2^-9 relative).
    """
    inputs = _qkv((1, 97, 97, 8), 32, seed=5, dtype=jnp.bfloat16)
    truth = _forward_and_grads("einsum", *(x.astype(jnp.float32) for x in inputs))
    kernel = _forward_and_grads(_gpu_layout(), *inputs)
    einsum = _forward_and_grads("einsum", *inputs)
    for name, got, baseline, true in zip(("out", "dq", "dk", "dv"), kernel, einsum, truth):
      true = np.asarray(true, np.float64)
      scale, rms = np.abs(true).max(), np.sqrt(np.mean(true**2))
      error = lambda x: np.abs(np.asarray(x, np.float64) - true)
      self.assertLessEqual(
          np.sqrt(np.mean(error(got) ** 2)) / rms,
          np.sqrt(np.mean(error(baseline) ** 2)) / rms,
          msg=name,
      )
      self.assertLessEqual(
          error(got).max() / scale, error(baseline).max() / scale + 2.0**-9, msg=name
      )


class BlockSizesTest(parameterized.TestCase):

  @parameterized.parameters(
      dict(query_block=48),
      dict(query_block=8),
      dict(channel_slice=100),
      dict(num_warps=3),
      dict(num_stages=0),
  )
  def test_invalid_values_are_reported(self, **fields):
    name = next(iter(fields))
    with self.assertRaisesRegex(ValueError, f"BlockSizes.{name}="):
      BlockSizes(**fields)

  def test_hashable_and_static(self):
    self.assertEqual(hash(BlockSizes(query_block=32)), hash(BlockSizes(query_block=32)))
    self.assertEqual(len(set(tuning_configurations())), 12)
    q = jnp.zeros((1, 3, 5, 8))
    attend = jax.jit(criss_cross_attention_pallas, static_argnames="block_sizes")
    # Zero values: every weighted sum is exactly 0, whatever the rounding of the weights.
    np.testing.assert_array_equal(attend(q, q, q, block_sizes=BlockSizes(query_block=16)), 0.0)


def _set_gamma(module, value):
  # gamma starts at 0, which would hide the attention from outputs and grads.
  module.attention.gamma.value = jnp.full((1,), value, jnp.float32)


class InsideModelsTest(parameterized.TestCase):
  """The kernel inside the head and the network, against the same in float64 (einsum).

  Both float32 implementations share everything but the attention, so the kernel's
  results may be no further from float64 than HEAD_FACTOR x the float32 einsum's.
  Measured: 4.6x at most (the value projection's bias gradient under fast math with
  SSE4.2 vectors; 1.6x with default XLA flags). A gradient that misses a branch or a parameter errs by
  a fraction of its value.
  """

  HEAD_FACTOR = 16

  @pytest.mark.numeric
  def test_rcca_head_outputs_and_parameter_grads(self):
    x = jax.random.normal(jax.random.key(0), (2, 9, 11, 32))
    cotangent = jax.random.normal(jax.random.key(1), (2, 9, 11, 5))
    # No dtype: the head computes in its inputs' and parameters' dtype, float64 included.
    head = RCCAHead(
        32, 5, recurrence=2, channels=16, out_channels=16, dropout=0.0, rngs=nnx.Rngs(0)
    )
    _set_gamma(head, 0.7)
    graphdef, params, rest = nnx.split(head, nnx.Param, ...)

    @jax.jit(static_argnums=0)
    def forward_and_grads(impl, params, rest, x, cotangent):
      def loss(params):
        model = nnx.merge(graphdef, params, rest, copy=True)
        model.attention.impl = impl
        out = model(x)
        return jnp.sum(out * cotangent), out

      grads, out = jax.grad(loss, has_aux=True)(params)
      return {"out": out, "grads": nnx.to_pure_dict(grads)}

    got = forward_and_grads("pallas", params, rest, x, cotangent)
    reference = forward_and_grads("einsum", params, rest, x, cotangent)
    with jax.enable_x64(True):
      truth = forward_and_grads("einsum", *numerics.in_float64((params, rest, x, cotangent)))
      truth = jax.tree.map(np.asarray, truth)
    # The attention's own parameters must receive gradient, or this test shows nothing.
    self.assertGreater(np.abs(truth["grads"]["attention"]["query"]["kernel"]).max(), 0)
    numerics.assert_as_accurate_as(got, reference, truth, factor=self.HEAD_FACTOR)

  def test_tiny_ccnet_sgd_steps(self):
    """Three SGD steps: the parameters and BatchNorm statistics after them.

    9 x 9 maps at the head: BatchNorm statistics over 2 x 9 x 9 values stay well
    conditioned, so rounding differences are not amplified step after step.
    """
    images = jax.random.normal(jax.random.key(0), (2, 65, 65, 3))
    labels = jax.random.randint(jax.random.key(1), (2, 9, 9), 0, 5)

    def tiny_ccnet(dtype):
      config = tiny_model_config(dtype=dtype)
      config.head.dropout = 0.0
      config.aux.enabled = False
      return build_model(config)

    def train(model, impl, images):
      model.head.attention.impl = impl
      graphdef, params, rest = nnx.split(model, nnx.Param, ...)

      @jax.jit
      def step(params, rest):
        def loss_fn(params):
          model = nnx.merge(graphdef, params, rest, copy=True)
          logits, _ = model(images)
          loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
          return loss, nnx.state(model, nnx.Not(nnx.Param))

        (loss, rest), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        return jax.tree.map(lambda p, g: p - 0.01 * g, params, grads), rest, loss

      losses = []
      for _ in range(3):
        params, rest, loss = step(params, rest)
        losses.append(float(loss))
      trained = {
          "params": nnx.to_pure_dict(params),
          "stats": nnx.to_pure_dict(nnx.state(nnx.merge(graphdef, params, rest), nnx.BatchStat)),
      }
      return jax.tree.map(np.asarray, trained), losses

    model = tiny_ccnet("float32")
    _set_gamma(model.head, 0.5)
    # The same initial parameters, only the implementation differs.
    got, losses = train(nnx.clone(model), "pallas", images)
    reference, _ = train(nnx.clone(model), "einsum", images)
    with jax.enable_x64(True):
      model64 = tiny_ccnet("float64")
      nnx.update(model64, numerics.in_float64(nnx.state(model, nnx.Not(nnx.RngState))))
      truth, _ = train(model64, "einsum", jnp.asarray(images, jnp.float64))
    self.assertLess(losses[2], losses[0])  # It trains.
    numerics.assert_as_accurate_as(got, reference, truth, factor=self.HEAD_FACTOR)


def _lower(platform, dtype, block_sizes):
  """StableHLO text of forward and backward at the Cityscapes shape's column length."""
  q = jax.ShapeDtypeStruct((1, 97, 33, 64), dtype)
  v = jax.ShapeDtypeStruct((1, 97, 33, 512), dtype)

  def forward_backward(q, k, v):
    attend = lambda q, k, v: criss_cross_attention_pallas(
        q,
        k,
        v,
        block_sizes=block_sizes,
        interpret=False,
        pad_to_power_of_two=platform == "cuda",
    )
    out, vjp = jax.vjp(attend, q, k, v)
    return out, vjp(out)

  return jax.jit(forward_backward).trace(q, q, v).lower(lowering_platforms=(platform,)).as_text()


class PlatformAndMeshTest(parameterized.TestCase):
  """What runs is decided for the platform lowered for, and per device under a mesh."""

  def test_the_platform_lowered_for_chooses_the_kernels(self):
    q = jax.ShapeDtypeStruct((1, 9, 7, 8), jnp.float32)
    v = jax.ShapeDtypeStruct((1, 9, 7, 16), jnp.float32)
    traced = jax.jit(criss_cross_attention_pallas).trace(q, q, v)
    text = {p: traced.lower(lowering_platforms=(p,)).as_text() for p in ("cuda", "tpu", "cpu")}
    self.assertEqual(text["cuda"].count("@__gpu$xla.gpu.triton"), 2)
    self.assertEqual(text["tpu"].count("@tpu_custom_call"), 2)
    for platform, other in (("cuda", "@tpu_custom_call"), ("tpu", "@__gpu$xla.gpu.triton")):
      self.assertNotIn(other, text[platform])
    self.assertNotIn("custom_call @", text["cpu"])  # The interpreter: plain HLO.

  def test_auto_is_chosen_at_lowering(self):
    q = jax.ShapeDtypeStruct((1, 9, 7, 8), jnp.bfloat16)
    v = jax.ShapeDtypeStruct((1, 9, 7, 16), jnp.bfloat16)
    traced = jax.jit(ops.get_criss_cross("auto")).trace(q, q, v)
    self.assertIn("@__gpu$xla.gpu.triton", traced.lower(lowering_platforms=("cuda",)).as_text())
    self.assertNotIn("custom_call @", traced.lower(lowering_platforms=("cpu",)).as_text())

  def test_per_device_under_a_mesh(self):
    """8 devices, one image each: the einsum's values and gradients, no gathered batch."""
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:8]), ("data",))
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    inputs = jax.device_put(_qkv((8, 9, 7, 8), 16), sharding)

    def forward_and_grads(q, k, v, d_out):
      with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
        out, vjp = jax.vjp(criss_cross_attention_pallas, q, k, v)
        return (out,) + vjp(d_out)

    lowered = jax.jit(forward_and_grads).lower(*inputs)
    self.assertIn("sdy.manual_computation", lowered.as_text())
    compiled = lowered.compile()
    self.assertNotIn("all-gather", compiled.as_text())
    _assert_float32_close(compiled(*inputs), inputs)


class LoweringTest(parameterized.TestCase):
  """The kernels lower for the accelerators without one: Triton IR and Mosaic MLIR are built.

  This runs the Pallas lowering rules of each backend (block-shape checks, the
  ops the kernels use); the Triton and Mosaic compilers themselves only run on
  the device.
  """

  @parameterized.parameters(jnp.float32, jnp.bfloat16)
  def test_every_tuning_configuration_lowers_for_cuda(self, dtype):
    for block_sizes in tuning_configurations():
      text = _lower("cuda", dtype, block_sizes)
      # Per branch one forward and one fused backward kernel.
      self.assertEqual(text.count("stablehlo.custom_call @__gpu$xla.gpu.triton"), 4)
      self.assertIn(f"num_warps = {block_sizes.num_warps} : i32", text)
      self.assertIn(f"num_stages = {block_sizes.num_stages} : i32", text)

  @parameterized.product(
      dtype=(jnp.float32, jnp.bfloat16), channel_slice=TUNING_GRID["channel_slice"]
  )
  def test_lowers_for_tpu(self, dtype, channel_slice):
    """On TPU only the channel slice of the tunables applies (whole unpadded sequences)."""
    text = _lower("tpu", dtype, BlockSizes(channel_slice=channel_slice))
    self.assertEqual(text.count("stablehlo.custom_call @tpu_custom_call"), 4)
