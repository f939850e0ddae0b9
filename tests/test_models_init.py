"""Each recipe's network starts where its reference code starts it.

The references are PyTorch networks with their own initialisation: the official CCNet
(tests/torch_reference.py) with torch's defaults, as speedinghzl/CCNet builds it, and
mmsegmentation's CCNet layout with mmseg's rules written from its source
(``torch_reference.mmseg_init_``). Both are small (ResNet-18 layout, width 16, R=2, 19
classes) and are compared with the model ``construct_model`` builds for the config their
checkpoints convert to (so the recipe's ``model.init`` is what is tested):

- array by array (through the checkpoint name mapping): where the reference is constant
  (norms, running statistics, gamma, zero biases) ours equals it; where it is random, the
  two samples must pass a two-sample Kolmogorov-Smirnov test, a test of the means and of the
  standard deviations (arrays of at least 1000 values: normal approximations of the
  difference of means and of the log ratio of the standard deviations, with the pooled
  sample's kurtosis), and a test of the range: the k values of largest magnitude of the
  pooled sample must not all come from one side, an event of probability
  (C(n, k) + C(m, k)) / C(n + m, k) when both samples come from one distribution;
- the whole model, in train mode, on one batch: the logits' standard deviation and the
  cross-entropies of both heads over 8 initialisations of each (Welch's t-test on the means).

Thresholds: every test above fails by chance with probability at most 1e-6 in all (each of
its checks at 1e-6 divided by their number), whatever the seeds, up to the normal and
asymptotic approximations named. ``test_the_comparison_finds_a_wrong_initialisation``
shows that they catch what matters: a He-normal classifier (std sqrt(2 / 19) where torch's
default gives 0.07 at this width), a normal draw where the reference's is uniform with the
same standard deviation, a norm initialised to 0 instead of 1.
"""

from __future__ import annotations

import functools
import math

import jax
import numpy as np
import pytest
from flax import nnx
from scipy import stats

torch = pytest.importorskip("torch")
F = torch.nn.functional

from ccnet_jax import convert  # pylint: disable=wrong-import-position
from ccnet_jax.models import init_schemes, model_dir  # pylint: disable=wrong-import-position
from ccnet_jax.models.heads import RCCAHead  # pylint: disable=wrong-import-position
from ccnet_jax.models.registry import construct_model, model_config  # pylint: disable=wrong-import-position
from ccnet_jax.models.resnet import Bottleneck  # pylint: disable=wrong-import-position
from tests import torch_reference  # pylint: disable=wrong-import-position

torch.set_num_threads(1)

FALSE_FAILURE = 1e-6  # Per test, over all its checks.
NUM_CLASSES = 19
SEEDS = 8  # Initialisations of each side in the loss test.
IMAGE_SIZE = 65
MIN_MOMENT_SIZE = 1000  # Arrays this large get the mean and standard deviation tests.
# InPlaceABN's scale is |weight| + eps: a weight of 1 converts to 1 + 1e-5 (in float32).
CONSTANT_ATOL = torch_reference.ABN_EPS + float(np.finfo(np.float32).eps)

RECIPES = {
    # format, reference network, its loss's align_corners (configs/common.py).
    "official": (
        "official",
        lambda: torch_reference.OfficialCCNet(
            18, NUM_CLASSES, 2, width=16, out_channels=64, dsn_channels=64
        ),
        True,
    ),
    "mmseg": (
        "mmseg",
        lambda: torch_reference.mmseg_init_(
            torch_reference.MMSegCCNet(18, NUM_CLASSES, 2, width=16, channels=64, aux_channels=32)
        ),
        False,
    ),
}


# What each recipe's config asks for (models/registry.py).
RECIPE_INIT = {
    "official": {"backbone": "torch", "head": "torch"},
    "mmseg": {"backbone": "mmseg", "head": "mmseg"},
}


def _batch():
  rng = np.random.default_rng(0)
  images = rng.normal(size=(2, IMAGE_SIZE, IMAGE_SIZE, 3)).astype(np.float32)
  labels = rng.integers(0, NUM_CLASSES, size=(2, IMAGE_SIZE, IMAGE_SIZE))
  return images, labels


def _loss_statistics(main, aux, labels, align_corners) -> np.ndarray:
  """(std of the main logits, CE main, CE aux) in float64, NHWC logits at output stride."""
  size = labels.shape[1:]
  target = torch.from_numpy(labels).long()

  def cross_entropy(logits):
    logits = torch.from_numpy(np.asarray(logits, np.float64)).permute(0, 3, 1, 2)
    logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=align_corners)
    return F.cross_entropy(logits, target).item()

  return np.array([np.asarray(main, np.float64).std(), cross_entropy(main), cross_entropy(aux)])


def _reference(recipe: str, seed: int):
  torch.manual_seed(seed)
  return RECIPES[recipe][1]().train()


@functools.cache
def _draws(recipe: str):
  """Both sides' arrays (seed 0, our flat names) and loss statistics (SEEDS seeds)."""
  fmt, _, align_corners = RECIPES[recipe]
  images, labels = _batch()
  reference = _reference(recipe, 0)
  released = reference.state_dict_like_release() if fmt == "official" else reference.state_dict()
  state_dict = {k: v.numpy() for k, v in released.items()}
  to_config = convert.official_config if fmt == "official" else convert.mmseg_config
  config = to_config(state_dict, num_classes=NUM_CLASSES, recurrence=2)
  assert config.init.to_dict() == RECIPE_INIT[recipe]

  def build_and_run(key, x):
    model = construct_model(config, seed=key)
    arrays = model_dir.model_arrays(model)  # Before train mode moves the statistics.
    model.train()
    return model(x), arrays

  # The random draws gain nothing from XLA's optimisations (as in build_model).
  run = (
      jax.jit(build_and_run)
      .lower(jax.random.key(0), images)
      .compile({"xla_backend_optimization_level": 0})
  )
  ours, ref = [], []
  for seed in range(SEEDS):
    (main, aux), arrays = run(jax.random.key(seed), images)
    if seed == 0:
      ours_arrays = model_dir.flatten(jax.tree.map(np.asarray, arrays))
    ours.append(_loss_statistics(main, aux, labels, align_corners))
    with torch.no_grad():
      outputs = _reference(recipe, seed)(torch.from_numpy(images).permute(0, 3, 1, 2))
    ref.append(
        _loss_statistics(*(o.permute(0, 2, 3, 1).numpy() for o in outputs), labels, align_corners)
    )
  skeleton = model_dir.empty_module(lambda: construct_model(config))
  ref_arrays = convert.convert_arrays(state_dict, skeleton, fmt)
  return ours_arrays, ref_arrays, np.array(ours), np.array(ref)


def _top_k_for(n: int, m: int, alpha: float) -> int | None:
  """The smallest k whose all-from-one-side probability is below alpha, if any."""
  log_total = lambda k: math.lgamma(n + m + 1) - math.lgamma(k + 1) - math.lgamma(n + m - k + 1)
  log_comb = lambda a, k: math.lgamma(a + 1) - math.lgamma(k + 1) - math.lgamma(a - k + 1)
  for k in range(1, min(n, m) + 1):
    p = math.exp(log_comb(n, k) - log_total(k)) + math.exp(log_comb(m, k) - log_total(k))
    if p <= alpha:
      return k
  return None


def _is_constant(values: np.ndarray) -> bool:
  return values.size == 0 or bool(np.all(values == values.flat[0]))


def differences(ours: dict, reference: dict) -> dict[str, str]:
  """Array name -> how ours is not drawn like the reference, for each array that is not."""
  random_names = [name for name, value in reference.items() if not _is_constant(value)]
  alpha = FALSE_FAILURE / (4 * max(len(random_names), 1))  # Four checks per random array.
  z_limit = stats.norm.isf(alpha / 2)
  found = {}
  for name, want in reference.items():
    got = np.asarray(ours[name], np.float64)
    want = np.asarray(want, np.float64)
    if got.shape != want.shape:
      found[name] = f"shape {got.shape}, reference {want.shape}"
      continue
    if name not in random_names:
      if not np.allclose(got, want, rtol=0, atol=CONSTANT_ATOL):
        found[name] = (
            f"reference is the constant {want.flat[0]:g}, ours {got.min():g}..{got.max():g}"
        )
      continue
    if _is_constant(got):
      found[name] = f"ours is the constant {got.flat[0]:g}, the reference random"
      continue
    a, b = got.ravel(), want.ravel()
    n, m = a.size, b.size
    why = []
    ks = stats.ks_2samp(a, b)
    if ks.pvalue < alpha:
      why.append(f"KS statistic {ks.statistic:.3f} (p {ks.pvalue:.1e})")
    if min(n, m) >= MIN_MOMENT_SIZE:
      pooled = np.concatenate([a - a.mean(), b - b.mean()])
      variance = pooled.var()
      z_mean = (a.mean() - b.mean()) / math.sqrt(variance * (1 / n + 1 / m))
      kurtosis = np.mean(pooled**4) / variance**2
      z_std = math.log(a.std() / b.std()) / math.sqrt((kurtosis - 1) / 4 * (1 / n + 1 / m))
      if abs(z_mean) > z_limit:
        why.append(f"mean {a.mean():.3g}, reference {b.mean():.3g}")
      if abs(z_std) > z_limit:
        why.append(f"std {a.std():.3g}, reference {b.std():.3g}")
    k = _top_k_for(n, m, alpha)
    if k is not None:
      top = np.argsort(np.abs(np.concatenate([a, b])))[-k:]
      if np.all(top < n) or np.all(top >= n):
        why.append(f"range: ours up to {np.abs(a).max():.3g}, the reference {np.abs(b).max():.3g}")
    if why:
      found[name] = "; ".join(why)
  return found


@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_arrays_are_drawn_like_the_reference(recipe):
  ours, reference, _, _ = _draws(recipe)
  assert sorted(ours) == sorted(reference)
  assert differences(ours, reference) == {}


@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_initial_loss_matches_the_reference(recipe):
  _, _, ours, reference = _draws(recipe)
  alpha = FALSE_FAILURE / ours.shape[1]
  for column, name in enumerate(("logits std", "CE main", "CE aux")):
    result = stats.ttest_ind(ours[:, column], reference[:, column], equal_var=False)
    assert result.pvalue > alpha, (name, ours[:, column], reference[:, column])
  # The test resolves a gap of a few percent in the losses: its 1e-6 limit on the
  # difference of the means is within 5% of the reference's loss.
  for column in (1, 2):
    spread = math.sqrt(
        ours[:, column].var(ddof=1) / SEEDS + reference[:, column].var(ddof=1) / SEEDS
    )
    limit = stats.t.isf(alpha / 2, 2 * SEEDS - 2) * spread
    assert limit < 0.05 * reference[:, column].mean(), (limit, reference[:, column])


def test_the_comparison_finds_a_wrong_initialisation():
  ours, reference, _, _ = _draws("official")
  wrong = dict(reference)
  rng = np.random.default_rng(0)
  # The classifier as a He-normal over fan-out would draw it: std sqrt(2 / 19) = 0.32.
  kernel = reference["head/classifier/kernel"]
  wrong["head/classifier/kernel"] = rng.normal(0, math.sqrt(2 / kernel.shape[-1]), kernel.shape)
  # torch's uniform replaced by a normal of the same standard deviation.
  kernel = reference["backbone/layer4/0/conv2/kernel"]
  wrong["backbone/layer4/0/conv2/kernel"] = rng.normal(0, kernel.std(), kernel.shape)
  # A norm at 0, as zero_init_residual would leave it.
  wrong["backbone/layer1/0/bn2/scale"] = np.zeros_like(reference["backbone/layer1/0/bn2/scale"])
  assert sorted(differences(ours, wrong)) == sorted(
      ["head/classifier/kernel", "backbone/layer4/0/conv2/kernel", "backbone/layer1/0/bn2/scale"]
  )


_LEAVES = {"kernel": "weight", "scale": "weight", "mean": "running_mean", "var": "running_var"}


def _torch_arrays(module, names, modules: dict[str, str], inplace_abn=False) -> dict:
  """The arrays of a PyTorch module under our flat names, in our layouts.

  ``modules`` maps our module paths to PyTorch's where they differ.
  """
  state = {k: v.numpy() for k, v in module.state_dict().items()}
  arrays = {}
  for name in names:
    path, leaf = name.rsplit("/", 1)
    value = state[f"{modules.get(path, path)}.{_LEAVES.get(leaf, leaf)}"]
    if leaf == "kernel":
      value = value.transpose(2, 3, 1, 0)
    elif leaf == "scale" and inplace_abn:
      value = np.abs(value) + torch_reference.ABN_EPS
    arrays[name] = value.reshape(1) if leaf == "gamma" else value
  return arrays


def _jitted_arrays(build) -> dict:
  """``build(key)``'s module arrays, built in one compiled program (seconds, not minutes)."""
  arrays = jax.jit(lambda key: model_dir.model_arrays(build(key)))(jax.random.key(0))
  return model_dir.flatten(jax.tree.map(np.asarray, arrays))


@pytest.mark.parametrize(
    "scheme,reference_init",
    [
        ("mmseg", torch_reference.mmseg_backbone_init_),
        ("torchvision", torch_reference.kaiming_fan_out_init_),
    ],
)
def test_backbone_schemes_on_a_bottleneck(scheme, reference_init):
  """The Bottleneck of ResNet-50/101 (the networks above have BasicBlocks): mmseg's
  zero_init_residual zeroes its third norm, torchvision's rule none."""
  downsample = torch.nn.Sequential(torch.nn.Conv2d(16, 32, 1, bias=False), torch.nn.BatchNorm2d(32))
  reference = reference_init(
      torch_reference.Bottleneck(16, 8, 1, 1, downsample, torch.nn.BatchNorm2d)
  )

  def build(key):
    block = Bottleneck(16, 8, rngs=nnx.Rngs(key))
    init_schemes.initialise_backbone(block, scheme, jax.random.fold_in(key, 1))
    return block

  ours = _jitted_arrays(build)
  modules = {"downsample/conv": "downsample.0", "downsample/bn": "downsample.1"}
  converted = _torch_arrays(reference, ours, modules)
  assert np.all(converted["bn3/scale"] == (0 if scheme == "mmseg" else 1))
  assert differences(ours, converted) == {}


def off_kaiming_normal(arrays: dict) -> dict[str, str]:
  """Kernel name -> how it is not a draw of normal(0, sqrt(2 / fan_out)), fan_out = kh kw out.

  The closed form, without a reference framework: the sample mean is normal with variance
  sigma^2 / n, and sum(x^2) / sigma^2 is chi-square with n degrees of freedom.
  """
  kernels = {name: a for name, a in arrays.items() if name.endswith("/kernel")}
  alpha = FALSE_FAILURE / (2 * len(kernels))  # Two two-sided checks per kernel.
  found = {}
  for name, kernel in kernels.items():
    x = np.asarray(kernel, np.float64).ravel()
    n, sigma = x.size, math.sqrt(2 / (kernel.shape[0] * kernel.shape[1] * kernel.shape[3]))
    why = []
    if 2 * stats.norm.sf(abs(x.mean()) * math.sqrt(n) / sigma) < alpha:
      why.append(f"mean {x.mean():.3g}")
    chi2 = np.sum(x**2) / sigma**2
    if 2 * min(stats.chi2.sf(chi2, n), stats.chi2.cdf(chi2, n)) < alpha:
      why.append(f"std {math.sqrt(np.mean(x**2)):.3g}, sqrt(2 / fan_out) {sigma:.3g}")
    if why:
      found[name] = "; ".join(why)
  return found


def _rcca_head_arrays(scheme: str) -> dict:
  def build(key):
    head = RCCAHead(64, 5, out_channels=32, rngs=nnx.Rngs(key))
    init_schemes.initialise_head(head, scheme, jax.random.fold_in(key, 1))
    return head

  return _jitted_arrays(build)


def test_kaiming_head_scheme():
  """Every conv of the RCCA head, the attention's and the classifier included, drawn as
  torchvision's rule draws a ResNet's (the scheme of no reference code): against torch's
  ``kaiming_normal_`` and against the closed form, which torch's default init fails."""
  reference = torch_reference.kaiming_fan_out_init_(torch_reference.RCCAModule(64, 32, 5))
  ours = _rcca_head_arrays("kaiming")
  assert off_kaiming_normal(ours) == {}
  assert {"attention/query/kernel", "attention/key/kernel", "classifier/kernel"} <= set(
      off_kaiming_normal(_rcca_head_arrays("torch"))
  )
  modules = {
      "conva/conv": "conva.0",
      "conva/norm": "conva.1",
      "attention": "cca",
      "attention/query": "cca.query_conv",
      "attention/key": "cca.key_conv",
      "attention/value": "cca.value_conv",
      "convb/conv": "convb.0",
      "convb/norm": "convb.1",
      "bottleneck/conv": "bottleneck.0",
      "bottleneck/norm": "bottleneck.1",
      "classifier": "bottleneck.3",
  }
  assert differences(ours, _torch_arrays(reference, ours, modules, inplace_abn=True)) == {}


@pytest.mark.parametrize("field", ["backbone", "head"])
def test_an_unknown_scheme_is_refused_with_its_field(field):
  config = model_config("ccnet_r50_official")
  config.init[field] = "xavier"
  with pytest.raises(ValueError, match=rf"model\.init\.{field}='xavier' is not one of \["):
    construct_model(config)
