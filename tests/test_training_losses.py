"""Losses against independent references: numpy loops and torch's cross_entropy."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ccnet_jax.data.labels import IGNORE_LABEL
from ccnet_jax.training import losses
from configs import common
from tests import numerics

torch = pytest.importorskip("torch")

IGNORE = IGNORE_LABEL  # How the data sources mark void pixels: what the losses must ignore.


def _rtol(logits, labels):
  """A first-order bound on the relative float32 error of a mean cross-entropy.

  Per pixel, the log-sum-exp rounds C + 4 times (exp and log within a few ulps under fast
  math: 4 (C + 4)) values up to the logits' spread plus one; the mean over n pixels rounds
  n times (Higham, Accuracy and Stability of Numerical Algorithms, 4.2). Against float64
  truths, which are exact at this scale.
  """
  logits = np.asarray(logits, np.float64)
  valid = labels != IGNORE
  spread = (logits.max(-1) - logits.min(-1))[valid].max() + 1
  nll, _ = _numpy_pixel_losses(logits, labels)
  classes = logits.shape[-1]
  return (valid.sum() + 4 * (classes + 4) * spread / nll.mean()) * numerics.UNIT_ROUNDOFF


def _random_problem(seed, shape=(2, 9, 11), classes=5, ignore_fraction=0.2, scale=2.0):
  rng = np.random.default_rng(seed)
  logits = (scale * rng.normal(size=(*shape, classes))).astype(np.float32)
  labels = rng.integers(0, classes, size=shape).astype(np.int32)
  labels[rng.random(shape) < ignore_fraction] = IGNORE
  return logits, labels


def _numpy_pixel_losses(logits, labels):
  """Per-pixel (-log p_target, p_target) of the valid pixels, in float64, pixel by pixel."""
  flat_logits = logits.reshape(-1, logits.shape[-1]).astype(np.float64)
  nll, prob = [], []
  for scores, label in zip(flat_logits, labels.reshape(-1)):
    if label == IGNORE:
      continue
    shifted = scores - scores.max()
    log_z = np.log(np.exp(shifted).sum())
    nll.append(log_z - shifted[label])
    prob.append(np.exp(shifted[label] - log_z))
  return np.array(nll), np.array(prob)


def _numpy_ohem(logits, labels, thresh, min_kept):
  """The official OhemCrossEntropy2d, step by step (argsort over valid probabilities)."""
  nll, prob = _numpy_pixel_losses(logits, labels)
  if min_kept > len(prob):
    kept = np.ones_like(prob, bool)
    branch = "all_valid"
  else:
    kth = prob[np.argsort(prob, kind="stable")[min_kept - 1]]
    threshold = max(thresh, kth)
    kept = prob <= threshold
    branch = "kth" if kth > thresh else "thresh"
  return nll[kept].mean(), branch, kept.sum()


@pytest.mark.numeric
@pytest.mark.parametrize("seed", [0, 1])
def test_cross_entropy_matches_numpy(seed):
  logits, labels = _random_problem(seed)
  nll, _ = _numpy_pixel_losses(logits, labels)
  actual = jax.jit(losses.cross_entropy)(logits, labels)
  chex.assert_shape(actual, ())
  np.testing.assert_allclose(actual, nll.mean(), rtol=_rtol(logits, labels))


@pytest.mark.numeric
def test_cross_entropy_of_bfloat16_logits_is_float32():
  logits, labels = _random_problem(2)
  actual = losses.cross_entropy(jnp.asarray(logits, jnp.bfloat16), labels)
  rounded = np.asarray(jnp.asarray(logits, jnp.bfloat16), np.float32)
  expected, _ = _numpy_pixel_losses(rounded, labels)
  assert actual.dtype == jnp.float32
  np.testing.assert_allclose(actual, expected.mean(), rtol=_rtol(rounded, labels))


def test_losses_are_zero_without_valid_pixels():
  logits, labels = _random_problem(3)
  labels = np.full_like(labels, IGNORE)
  assert float(losses.cross_entropy(logits, labels)) == 0.0
  assert float(losses.ohem_cross_entropy(logits, labels, min_kept=10)) == 0.0


@pytest.mark.numeric
@pytest.mark.parametrize(
    "thresh,min_kept,expected_branch",
    [
        (0.7, 100_000, "all_valid"),  # num_valid < min_kept: every valid pixel counts
        (0.05, 100, "kth"),  # the 100th smallest probability is above 0.05
        (0.7, 10, "thresh"),  # the 10th smallest is below 0.7: keep everything <= 0.7
    ],
)
def test_ohem_matches_the_official_algorithm(thresh, min_kept, expected_branch):
  logits, labels = _random_problem(4)
  expected, branch, num_kept = _numpy_ohem(logits, labels, thresh, min_kept)
  assert branch == expected_branch
  if branch == "kth":
    assert num_kept == min_kept
  ohem = jax.jit(losses.ohem_cross_entropy, static_argnames=("min_kept", "ignore_label"))
  actual = ohem(logits, labels, thresh=thresh, min_kept=min_kept)
  np.testing.assert_allclose(actual, expected, rtol=_rtol(logits, labels))


@pytest.mark.numeric
def test_ohem_without_mining_is_cross_entropy():
  logits, labels = _random_problem(5)
  np.testing.assert_allclose(
      losses.ohem_cross_entropy(logits, labels, min_kept=0),
      losses.cross_entropy(logits, labels),
      rtol=2 * _rtol(logits, labels),  # Each within the bound of the truth.
  )


def test_shape_mismatch_is_a_clear_error():
  logits, labels = _random_problem(6)
  with pytest.raises(ValueError, match="upsample the logits"):
    losses.cross_entropy(logits[:, :4], labels)


def _torch_upsampled(logits, size, align_corners):
  """In float64: the truths below are float64 throughout."""
  x = torch.from_numpy(logits).double().permute(0, 3, 1, 2)
  return torch.nn.functional.interpolate(x, size=size, mode="bilinear", align_corners=align_corners)


def _upsampled_rtol(logits, labels, align_corners):
  """The bound of _rtol on the upsampled logits, plus the upsampling's 4 roundings per value
  (relative to the spread, as the log-sum-exp's)."""
  size = labels.shape[1:]
  upsampled = _torch_upsampled(logits, size, align_corners).permute(0, 2, 3, 1).numpy()
  return _rtol(upsampled, labels) * 2


def _loss_config(**overrides):
  config = common.loss_config()
  config.update(overrides)
  return config


@pytest.mark.numeric
@pytest.mark.parametrize("align_corners", [True, False])
def test_segmentation_loss_matches_torch_dsn_criterion(align_corners):
  rng = np.random.default_rng(7)
  logits = rng.normal(size=(2, 5, 6, 4)).astype(np.float32)
  aux_logits = rng.normal(size=(2, 5, 6, 4)).astype(np.float32)
  labels = rng.integers(0, 4, size=(2, 17, 21)).astype(np.int32)
  labels[rng.random(labels.shape) < 0.1] = IGNORE
  target = torch.from_numpy(labels).long()
  main = torch.nn.functional.cross_entropy(
      _torch_upsampled(logits, (17, 21), align_corners), target, ignore_index=IGNORE
  ).item()
  aux = torch.nn.functional.cross_entropy(
      _torch_upsampled(aux_logits, (17, 21), align_corners), target, ignore_index=IGNORE
  ).item()
  config = _loss_config(align_corners=align_corners, ohem=False, aux_weight=0.4)
  loss, metrics = jax.jit(lambda *arrays: losses.segmentation_loss(*arrays, config))(
      logits, aux_logits, labels
  )
  rtol = max(_upsampled_rtol(x, labels, align_corners) for x in (logits, aux_logits))
  np.testing.assert_allclose(metrics["main"], main, rtol=rtol)
  np.testing.assert_allclose(metrics["aux"], aux, rtol=rtol)
  np.testing.assert_allclose(loss, main + 0.4 * aux, rtol=rtol)
  np.testing.assert_allclose(metrics["loss"], loss)


@pytest.mark.numeric
def test_segmentation_loss_with_ohem_mines_the_upsampled_main_logits_only():
  rng = np.random.default_rng(8)
  logits = (3 * rng.normal(size=(2, 5, 5, 4))).astype(np.float32)
  aux_logits = rng.normal(size=(2, 5, 5, 4)).astype(np.float32)
  labels = rng.integers(0, 4, size=(2, 13, 13)).astype(np.int32)
  labels[rng.random(labels.shape) < 0.1] = IGNORE
  upsampled = _torch_upsampled(logits, (13, 13), True).permute(0, 2, 3, 1).numpy()
  main, branch, _ = _numpy_ohem(upsampled, labels, thresh=0.3, min_kept=50)
  assert branch == "thresh"
  aux = torch.nn.functional.cross_entropy(
      _torch_upsampled(aux_logits, (13, 13), True),
      torch.from_numpy(labels).long(),
      ignore_index=IGNORE,
  ).item()
  config = _loss_config(ohem=True, ohem_thresh=0.3, ohem_min_kept=50, aux_weight=0.25)
  loss, metrics = losses.segmentation_loss(logits, aux_logits, labels, config)
  rtol = max(_upsampled_rtol(x, labels, True) for x in (logits, aux_logits))
  np.testing.assert_allclose(metrics["main"], main, rtol=rtol)
  np.testing.assert_allclose(metrics["aux"], aux, rtol=rtol)
  np.testing.assert_allclose(loss, main + 0.25 * aux, rtol=rtol)


@pytest.mark.numeric
def test_segmentation_loss_without_aux_head_is_the_main_loss():
  logits, labels = _random_problem(9)
  loss, metrics = losses.segmentation_loss(logits, None, labels, _loss_config(ohem=False))
  nll, _ = _numpy_pixel_losses(logits, labels)
  np.testing.assert_allclose(loss, nll.mean(), rtol=_rtol(logits, labels))
  assert float(metrics["aux"]) == 0.0
