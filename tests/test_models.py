"""The CCNet family: parameter counts, shapes, heads, and the paper's propagation claim."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized
from flax import nnx

from ccnet_jax.models import resnet
from ccnet_jax.models.heads import CrissCrossAttention, NonLocalAttention
from ccnet_jax.models.registry import build_model, construct_model, model_config
from ccnet_jax.models.resnet import ResNet
from tests.helpers import tiny_model_config


def _num_params(module) -> int:
  return sum(x.size for x in jax.tree.leaves(nnx.state(module, nnx.Param)))


def _abstract(build):
  """The module with ShapeDtypeStructs for arrays: counts and shapes without allocation."""
  return nnx.eval_shape(build)


def _eval_shapes(module, input_shape):
  graphdef, state = nnx.split(module)

  def forward(state, images):
    model = nnx.merge(graphdef, state)
    model.eval()
    return model(images)

  return jax.eval_shape(forward, state, jax.ShapeDtypeStruct(input_shape, jnp.float32))


def tiny_config(**head):
  config = tiny_model_config()
  config.head.update(head)
  return config


def _official_parameter_count(num_classes):
  """Counted by hand from the modules of networks/ccnet.py in github.com/speedinghzl/CCNet
  (Res_Deeplab: ResNet(Bottleneck, [3, 4, 23, 3]) with RCCAModule(2048, 512) and the dsn
  head); an InPlaceABNSync of C channels holds a weight and a bias."""

  def conv(c_in, c_out, k, bias=False):
    return c_in * c_out * k * k + (c_out if bias else 0)

  def norm(c):
    return 2 * c

  count = conv(3, 64, 3) + norm(64) + conv(64, 64, 3) + norm(64) + conv(64, 128, 3) + norm(128)
  in_planes = 128
  for planes, blocks in ((64, 3), (128, 4), (256, 23), (512, 3)):
    # Every stage's first block changes the channel count, so it has a downsample branch.
    count += conv(in_planes, planes * 4, 1) + norm(planes * 4)
    for block in range(blocks):
      c_in = in_planes if block == 0 else planes * 4
      count += conv(c_in, planes, 1) + norm(planes) + conv(planes, planes, 3) + norm(planes)
      count += conv(planes, planes * 4, 1) + norm(planes * 4)
    in_planes = planes * 4
  # RCCAModule: conv1a, PixelwiseAttention (query, key: 512 -> 64; value 512 -> 512; gamma),
  # conv1b, bottleneck (2560 -> 512, then the classifier).
  count += conv(2048, 512, 3) + norm(512)
  count += 2 * conv(512, 64, 1, bias=True) + conv(512, 512, 1, bias=True) + 1
  count += conv(512, 512, 3) + norm(512)
  count += conv(2560, 512, 3) + norm(512) + conv(512, num_classes, 1, bias=True)
  # dsn: conv 1024 -> 512 with bias, InPlaceABNSync, the classifier.
  count += conv(1024, 512, 3, bias=True) + norm(512) + conv(512, num_classes, 1, bias=True)
  return count


class OfficialModelTest(parameterized.TestCase):

  def test_official_ccnet_r101_has_the_official_codes_parameter_count(self):
    model = _abstract(lambda: build_model(model_config("ccnet_r101_official")))
    # BatchNorm running statistics are BatchStat, not Param, so they are excluded.
    self.assertEqual(_official_parameter_count(num_classes=19), 71_287_911)
    self.assertEqual(_num_params(model), _official_parameter_count(num_classes=19))

  def test_769_crop_gives_97x97_logits_for_both_heads(self):
    model = _abstract(lambda: build_model(model_config("ccnet_r101_official")))
    logits, aux_logits = _eval_shapes(model, (2, 769, 769, 3))
    chex.assert_shape([logits, aux_logits], (2, 97, 97, 19))
    chex.assert_type([logits, aux_logits], jnp.float32)

  def test_official_layer3_and_layer4_are_dilated_not_strided(self):
    model = _abstract(lambda: build_model(model_config("ccnet_r101_official")))
    backbone = model.backbone
    self.assertEqual(backbone.layer3[0].conv2.kernel_dilation, 2)
    self.assertEqual(backbone.layer3[0].conv2.strides, 1)
    self.assertEqual({b.conv2.kernel_dilation for b in backbone.layer4}, {4})
    self.assertTrue(backbone.stem.ceil_mode)


class ResNetTest(parameterized.TestCase):

  # torchvision's published parameter counts minus the 1000-way fc layer.
  @parameterized.parameters(
      (18, 11_689_512 - 513_000),
      (34, 21_797_672 - 513_000),
      (50, 25_557_032 - 2_049_000),
      (101, 44_549_160 - 2_049_000),
      (152, 60_192_808 - 2_049_000),
  )
  def test_classic_resnets_match_torchvision_counts(self, depth, expected):
    backbone = _abstract(lambda: ResNet(depth, stem="classic", rngs=nnx.Rngs(0)))
    self.assertEqual(_num_params(backbone), expected)

  @parameterized.product(
      size=[(97, 97), (96, 128), (65, 33)],
      stem=["deep", "v1c", "classic"],
      output_stride=[8, 16, 32],
  )
  def test_stage_shapes_follow_torch_arithmetic(self, size, stem, output_stride):
    torch = pytest.importorskip("torch")
    backbone = _abstract(
        lambda: ResNet(50, stem=stem, output_stride=output_stride, base_width=8, rngs=nnx.Rngs(0))
    )
    # The spatial path of the stem in torch: strided conv, then the max-pool.
    kernel, padding = (7, 3) if stem == "classic" else (3, 1)
    probe = torch.zeros(1, 1, *size)
    probe = torch.nn.functional.conv2d(
        probe, torch.zeros(1, 1, kernel, kernel), stride=2, padding=padding
    )
    probe = torch.nn.functional.max_pool2d(probe, 3, 2, 1, ceil_mode=(stem == "deep"))
    expected = [tuple(probe.shape[-2:])]
    for stride in resnet.OUTPUT_STRIDES[output_stride][0][1:]:
      probe = torch.nn.functional.conv2d(probe, torch.zeros(1, 1, 3, 3), stride=stride, padding=1)
      expected.append(tuple(probe.shape[-2:]))
    features = _eval_shapes(backbone, (1, *size, 3))
    self.assertEqual([f.shape[1:3] for f in features], expected)
    self.assertEqual([f.shape[3] for f in features], [32, 64, 128, 256])

  def test_mmseg_contract_dilation_and_multi_grid(self):
    dilations = resnet.block_dilations
    self.assertEqual(dilations(3, 4, multi_grid=None, contract_dilation=True), [2, 4, 4])
    self.assertEqual(dilations(3, 4, multi_grid=(1, 2, 4), contract_dilation=False), [4, 8, 16])
    self.assertEqual(dilations(2, 1, multi_grid=None, contract_dilation=True), [1, 1])

  def test_bad_backbone_fields_are_named(self):
    for field, value in (("depth", 42), ("stem", "fancy"), ("output_stride", 4)):
      with pytest.raises(ValueError, match=f"model.backbone.{field}"):
        ResNet(**{field: value}, rngs=nnx.Rngs(0))


class HeadTest(parameterized.TestCase):

  def test_tiny_ccnet_forward_in_train_and_eval_mode(self):
    model = build_model(tiny_config())
    images = jax.random.normal(jax.random.key(0), (2, 33, 47, 3))
    logits, aux_logits = model(images)
    # 33 x 47 -> stem conv 17 x 24 -> ceil-mode pool 9 x 13 -> stride 8: 5 x 7.
    chex.assert_shape([logits, aux_logits], (2, 5, 7, 5))
    model.eval()
    first, _ = model(images)
    second, _ = model(images)
    chex.assert_trees_all_equal(first, second)  # No dropout, running statistics.
    chex.assert_tree_all_finite(first)

  def test_bfloat16_compute_returns_float32_logits_and_float32_params(self):
    config = tiny_config()
    config.dtype = "bfloat16"
    model = build_model(config)
    logits, aux_logits = model(jnp.ones((1, 32, 32, 3)))
    chex.assert_type([logits, aux_logits], jnp.float32)
    dtypes = {x.dtype for x in jax.tree.leaves(nnx.state(model, nnx.Param))}
    self.assertEqual(dtypes, {jnp.dtype(jnp.float32)})

  def test_recurrence_zero_is_the_fcn_baseline_without_attention_weights(self):
    fcn = build_model(tiny_config(recurrence=0))
    ccnet = build_model(tiny_config(recurrence=2))
    self.assertIsNone(fcn.head.attention)
    # q and k: 16 -> 2 channels with bias, v: 16 -> 16 with bias, and gamma.
    self.assertEqual(_num_params(ccnet) - _num_params(fcn), 2 * (16 * 2 + 2) + 16 * 16 + 16 + 1)

  def test_recurrence_shares_one_attention_block(self):
    for recurrence in (1, 2, 3):
      model = build_model(tiny_config(recurrence=recurrence))
      self.assertEqual(_num_params(model), _num_params(build_model(tiny_config())))

  def test_non_local_head_and_disabled_aux(self):
    config = tiny_config(attention="non_local", recurrence=1)
    config.aux.enabled = False
    model = build_model(config)
    self.assertIsInstance(model.head.attention, NonLocalAttention)
    logits, aux_logits = model(jnp.ones((1, 24, 24, 3)))
    chex.assert_shape(logits, (1, 4, 4, 5))  # 24 -> 12 -> ceil-mode pool 7 -> 4.
    self.assertIsNone(aux_logits)

  def test_gamma_starts_at_zero_so_attention_starts_as_identity(self):
    block = CrissCrossAttention(16, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(1), (1, 5, 6, 16))
    np.testing.assert_array_equal(block(x), x)

  def test_bad_head_fields_are_named(self):
    with pytest.raises(ValueError, match="model.head.attention"):
      build_model(tiny_config(attention="global"))
    with pytest.raises(ValueError, match="model.cca_impl"):
      config = tiny_config()
      config.cca_impl = "cuda"
      build_model(config)
    with pytest.raises(ValueError, match="Unknown model"):
      model_config("ccnet_r999")

  def test_float64_model_needs_64_bit_jax(self):
    config = tiny_config()
    config.dtype = "float64"
    assert not jax.config.jax_enable_x64
    with pytest.raises(ValueError, match="JAX_ENABLE_X64=1"):
      build_model(config)

  def test_float64_model_has_float64_parameters_and_statistics(self):
    config = tiny_config()
    config.dtype = "float64"
    with jax.enable_x64(True):
      model = _abstract(lambda: construct_model(config))
    dtypes = {x.dtype for x in jax.tree.leaves(nnx.state(model, (nnx.Param, nnx.BatchStat)))}
    assert dtypes == {jnp.dtype(jnp.float64)}

  @parameterized.parameters(True, False)
  def test_bn_fast_variance_reaches_every_norm(self, fast):
    config = tiny_config()
    config.bn_fast_variance = fast
    model = _abstract(lambda: construct_model(config))
    norms = [m for _, m in nnx.iter_graph(model) if isinstance(m, nnx.BatchNorm)]
    assert len(norms) > 20 and {m.use_fast_variance for m in norms} == {fast}


class PropagationTest(parameterized.TestCase):
  """Section 3.2 of the paper: R=1 reaches the row and column, R=2 reaches every pixel."""

  @parameterized.parameters((1,), (2,), (3,))
  def test_dependency_pattern_of_recurrent_criss_cross(self, recurrence):
    block = CrissCrossAttention(8, rngs=nnx.Rngs(0))
    block.gamma[...] = jnp.ones((1,))
    height, width, h0, w0 = 6, 7, 2, 4

    def output_pixel(x):
      for _ in range(recurrence):
        x = block(x)
      return x[0, h0, w0]

    x = jax.random.normal(jax.random.key(1), (1, height, width, 8))
    jacobian = jax.jacrev(output_pixel)(x)  # (8, 1, H, W, 8)
    depends = np.asarray(jnp.abs(jacobian).sum(axis=(0, 1, 4)) > 0)
    if recurrence == 1:
      expected = np.zeros((height, width), bool)
      expected[h0, :] = True
      expected[:, w0] = True
    else:
      expected = np.ones((height, width), bool)
    np.testing.assert_array_equal(depends, expected)
