"""Imported PyTorch checkpoints reproduce the PyTorch networks' outputs.

Reference networks (tests/torch_reference.py) get random weights, random
BatchNorm statistics and a non-zero attention gamma, are saved with torch.save,
read back, converted, and compared in eval mode.
"""

import copy

import numpy as np
import pytest
from flax import nnx

torch = pytest.importorskip("torch")

from ccnet_jax import convert  # pylint: disable=g-import-not-at-top,wrong-import-position
from ccnet_jax.convert.__main__ import main as convert_main  # pylint: disable=wrong-import-position
from ccnet_jax.loading import load_model  # pylint: disable=wrong-import-position
from ccnet_jax.models import model_dir  # pylint: disable=wrong-import-position
from ccnet_jax.models.preprocessing import OFFICIAL  # pylint: disable=wrong-import-position
from ccnet_jax.models.registry import build_model  # pylint: disable=wrong-import-position
from tests import numerics, torch_reference  # pylint: disable=wrong-import-position
from tests.helpers import run_command  # pylint: disable=wrong-import-position

torch.set_num_threads(1)

# Outputs against PyTorch float64, allowed FLOAT32_FACTOR x PyTorch float32's own error
# (tests/numerics.py): both run the same layers in float32, in different orders.
# Measured up to 1.6x (both XLA configurations of README's test command).
FLOAT32_FACTOR = 4


def _load(format, state_dict, **options):  # pylint: disable=redefined-builtin
  """The converted module (in eval mode) of a checkpoint in ``format``."""
  return convert.load_checkpoint(format, state_dict, **options)[0]


def _save(tmp_path, state_dict, name="model.pth"):
  path = tmp_path / name
  torch.save(state_dict, path)
  return path


def _images(height, width, seed=0):
  return np.random.default_rng(seed).normal(size=(1, height, width, 3)).astype(np.float32)


def _torch_forward(module, images):
  """The outputs of ``module`` in float32 (the reference) and float64 (the truth)."""
  results = []
  for dtype in (torch.float32, torch.float64):
    with torch.no_grad():
      inputs = torch.from_numpy(images.transpose(0, 3, 1, 2)).to(dtype)
      outputs = copy.deepcopy(module).to(dtype)(inputs)
    results.append([o.numpy().transpose(0, 2, 3, 1) for o in outputs])
  return results


@nnx.jit
def _forward(model, images):
  return model(images)


def _assert_close(got, torch_outputs, name):
  """``got`` (the outputs) as close to PyTorch float64 as PyTorch float32 is (x FACTOR)."""
  reference, truth = torch_outputs
  numerics.assert_as_accurate_as(
      [np.asarray(g) for g in got], reference, truth, factor=FLOAT32_FACTOR, err_msg=name
  )


def _official(depth=18, recurrence=2, seed=0, num_classes=5):
  net = torch_reference.OfficialCCNet(
      depth,
      num_classes=num_classes,
      recurrence=recurrence,
      width=8,
      out_channels=16,
      dsn_channels=12,
  )
  return torch_reference.randomise_(net, seed)


@pytest.mark.numeric
@pytest.mark.parametrize(
    "depth,recurrence,size",
    [(18, 1, (97, 97)), (18, 2, (96, 128)), (50, 2, (65, 48))],
)
def test_official_ccnet_matches_pytorch(tmp_path, depth, recurrence, size):
  net = _official(depth, recurrence)
  path = _save(tmp_path, {"module." + k: v for k, v in net.state_dict_like_release().items()})
  model = _load("official", convert.read_state_dict(path), num_classes=5, recurrence=recurrence)
  assert model.backbone.stem.ceil_mode and model.aux_head.conv.conv.use_bias
  images = _images(*size)
  _assert_close(_forward(model, images), _torch_forward(net, images), "logits, aux logits")


def test_official_gamma_matters_and_abn_scale_uses_abs(tmp_path):
  """Zeroing gamma or using the signed InPlaceABN weight changes the output: both are read."""
  net = _official(recurrence=2, seed=3)
  state = {k: v.numpy() for k, v in net.state_dict_like_release().items()}
  images = _images(33, 41)
  reference = _forward(_load("official", state, num_classes=5), images)[0]
  no_gamma = dict(state, **{"head.cca.gamma": np.zeros(1, np.float32)})
  without = _forward(_load("official", no_gamma, num_classes=5), images)[0]
  assert not np.allclose(without, reference, atol=1e-3)
  assert (state["head.conva.1.weight"] < 0).any()
  model = _load("official", state, num_classes=5)
  # InPlaceABN's float32 |w| + eps, one rounding: bit for bit.
  np.testing.assert_array_equal(
      np.asarray(model.head.conva.norm.scale[...]),
      np.abs(state["head.conva.1.weight"]) + np.float32(1e-5),
  )


@pytest.mark.numeric
@pytest.mark.parametrize("recurrence,size", [(1, (97, 97)), (2, (96, 128))])
def test_mmseg_ccnet_matches_pytorch(tmp_path, recurrence, size):
  net = torch_reference.randomise_(
      torch_reference.MMSegCCNet(
          18, num_classes=4, recurrence=recurrence, width=8, channels=16, aux_channels=8
      ),
      seed=recurrence,
  )
  state = dict(net.state_dict())
  if recurrence == 2:  # Older mmcv: gamma a (1,) parameter, not a Scale module.
    state["decode_head.cca.gamma"] = state.pop("decode_head.cca.gamma.scale").reshape(1)
  checkpoint = {
      "meta": {"config": f"model = dict(decode_head=dict(type='CCHead', recurrence={recurrence}))"},
      "state_dict": state,
  }
  state_dict, meta = convert.read_checkpoint(_save(tmp_path, checkpoint))
  assert meta["config"].endswith(f"recurrence={recurrence}))")
  # R is read from the meta's config text.
  model = _load("mmseg", {"state_dict": state_dict, "meta": meta})
  assert model.head.recurrence == recurrence and model.backbone.layer3[0].conv2.kernel_dilation == 1
  images = _images(*size)
  _assert_close(_forward(model, images), _torch_forward(net, images), "logits, aux logits")


@pytest.mark.numeric
@pytest.mark.parametrize(
    "format,stem,dilation_style,depth,output_stride",
    [
        ("mit", "deep", "official", 50, 8),
        ("torchvision", "classic", "official", 18, 8),
        ("torchvision", "classic", "none", 18, 32),
        ("v1c", "v1c", "contract", 18, 8),
    ],
)
def test_backbones_match_pytorch(tmp_path, format, stem, dilation_style, depth, output_stride):
  net = torch_reference.randomise_(
      torch_reference.ResNet(
          depth, stem=stem, width=8, dilation_style=dilation_style, fc_classes=10
      ),
      seed=depth,
  )
  state = dict(net.state_dict())
  backbone = _load(
      format, convert.read_state_dict(_save(tmp_path, state)), output_stride=output_stride
  )
  images = _images(57, 70)
  _assert_close(_forward(backbone, images), _torch_forward(net, images), "stages 1..4")


def test_backbone_of_a_whole_model_fills_only_the_backbone():
  net = _official(seed=5)
  state = {k: v.numpy() for k, v in net.state_dict_like_release().items()}
  model = _load("official", state, num_classes=5)
  target = _load(
      "official",
      {k: v.numpy() for k, v in _official(seed=6).state_dict_like_release().items()},
      num_classes=5,
  )
  head_before = model_dir.flatten(model_dir.model_arrays(target.head))
  convert.load_into(target.backbone, state, "official")
  got = model_dir.flatten(model_dir.model_arrays(target))
  for name, value in model_dir.flatten(model_dir.model_arrays(model.backbone)).items():
    np.testing.assert_array_equal(got["backbone/" + name], value)
  for name, value in head_before.items():
    np.testing.assert_array_equal(got["head/" + name], value)
  pure = convert.convert_state(state, target.backbone, "official")
  np.testing.assert_array_equal(
      pure["layer1"][0]["conv1"]["kernel"], state["layer1.0.conv1.weight"].transpose(2, 3, 1, 0)
  )


def test_unmatched_and_missing_names_are_listed():
  state = {k: v.numpy() for k, v in _official().state_dict_like_release().items()}
  del state["layer2.1.bn1.running_var"]
  state["head.extra.weight"] = np.zeros((1,), np.float32)
  state["layer1.0.bn1.num_batches_tracked"] = np.zeros((), np.int64)  # Ignored.
  with pytest.raises(ValueError) as error:
    _load("official", state, num_classes=5)
  message = str(error.value)
  assert "1 unmatched checkpoint names ['head.extra.weight']" in message
  assert "1 missing ['backbone/layer2/1/bn1/var <- layer2.1.bn1.running_var']" in message


def test_wrong_classes_depth_and_format_fail_clearly():
  state = {k: v.numpy() for k, v in _official().state_dict_like_release().items()}
  with pytest.raises(ValueError, match="has 5 classes; pass num_classes=5"):
    _load("official", state, num_classes=19)
  with pytest.raises(ValueError, match="depth=101 but the checkpoint is a ResNet-18"):
    convert.backbone_config(state, "mit", depth=101)
  with pytest.raises(ValueError, match="Unknown checkpoint format"):
    convert.convert_arrays(state, _load("official", state, num_classes=5), "caffe")


def test_cli_writes_a_loadable_model(tmp_path, capsys):
  net = _official(recurrence=1, seed=7)
  path = _save(tmp_path, net.state_dict_like_release())
  out = tmp_path / "exported"
  assert run_command(convert_main, "official", path, out, "--recurrence", "1") == 0
  printed = capsys.readouterr().out
  assert '"recurrence": 1' in printed and str(out) in printed
  loaded = load_model(out)
  model = loaded.model
  assert loaded.preprocessing == OFFICIAL
  assert loaded.config.head.recurrence == 1 and loaded.num_classes == 5
  images = _images(41, 40)
  _assert_close(_forward(model, images), _torch_forward(net, images), "logits, aux logits")

  backbone_net = torch_reference.randomise_(
      torch_reference.ResNet(18, stem="v1c", width=8, fc_classes=3), seed=8
  )
  bb_path = _save(tmp_path, backbone_net.state_dict(), "resnet18_v1c.pth")
  assert run_command(convert_main, "v1c", bb_path, tmp_path / "bb") == 0
  assert '"part": "backbone"' in capsys.readouterr().out
  config = model_dir.read_info(tmp_path / "bb").config
  config.num_classes = 7
  target = model_dir.empty_module(lambda: build_model(config))
  model_dir.load_state_into(target, tmp_path / "bb", part="backbone")
  np.testing.assert_allclose(
      np.asarray(target.backbone.stem.conv3.kernel[...]),
      backbone_net.state_dict()["stem.6.weight"].numpy().transpose(2, 3, 1, 0),
  )
  assert run_command(convert_main, "official", tmp_path / "missing.pth", tmp_path / "x") == 1
  assert "not found" in capsys.readouterr().err


def test_reference_outputs_are_order_one():
  """The comparisons above are at a meaningful scale (random statistics calibrated)."""
  net = _official(50, 2)
  _, (logits, aux) = _torch_forward(net, _images(65, 48))
  assert 0.1 < np.abs(logits).max() < 100 and 0.1 < np.abs(aux).max() < 100


@pytest.mark.parametrize("release", ["official", "mmseg"])
def test_full_size_resnet101_releases_map_every_name_and_shape(release):
  """The released ResNet-101 layouts, names and shapes only (no weights are allocated)."""
  with torch.device("meta"):
    if release == "official":
      net = torch_reference.OfficialCCNet(101, num_classes=19)
      shapes = {k: tuple(v.shape) for k, v in net.state_dict_like_release().items()}
    else:
      net = torch_reference.MMSegCCNet(101, num_classes=19)
      shapes = {k: tuple(v.shape) for k, v in net.state_dict().items()}
  state = {k: np.broadcast_to(np.float32(0), s) for k, s in shapes.items()}
  if release == "official":
    config = convert.official_config(state, num_classes=19)
    assert config.to_dict() == convert.official_config(state).to_dict()
    expected = "ccnet_r101_official"
  else:
    config = convert.mmseg_config(state)
    expected = "ccnet_r101_d8_mmseg"
  from ccnet_jax.models.registry import model_config  # pylint: disable=g-import-not-at-top

  # The inferred config is the registry's preset for that release (whose head
  # width is implicit: 2048 // 4).
  preset = model_config(expected)
  preset.head.channels = 512
  assert config.to_dict() == preset.to_dict()
  model = model_dir.empty_module(lambda: build_model(config))
  arrays = convert.convert_arrays(state, model, release)
  want = model_dir.flatten(model_dir.model_arrays(model))
  assert sorted(arrays) == sorted(want)
  for name, value in arrays.items():
    assert value.shape == want[name].shape, name
