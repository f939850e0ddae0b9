"""What several test modules share: attention inputs, tiny models and runs, random weights, a VOC folder tree,
running a command.

Fixtures built from these (a saved model directory) are in conftest.py.
"""

from __future__ import annotations

import functools
import os
import signal

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx
from PIL import Image

from ccnet_jax import cli
from ccnet_jax.data.labels import dataset_info
from ccnet_jax.models import model_dir
from ccnet_jax.models.preprocessing import Preprocessing
from ccnet_jax.models.registry import construct_model, model_config
from configs import synthetic
from tests.processes import ROOT

__all__ = [
    "ATTENTION_SHAPES",
    "PREPROCESSING",
    "ROOT",
    "VOC_IDS",
    "attention_inputs",
    "flat_arrays",
    "randomised",
    "run_command",
    "sigterm_after_steps",
    "tiny_model_config",
    "tiny_ccnet",
    "tiny_run_config",
    "voc_tree",
]


# A BGR normalisation with a distinct value per channel, so a swapped channel order or a mean
# used as a std changes the logits.
PREPROCESSING = Preprocessing("bgr", (104.0, 116.7, 122.7), (57.0, 58.0, 59.0))


def attention_inputs(shape, value_channels, seed=0, scale=1.0):
  """Random (q, k, v) for criss-cross attention: q and k of ``shape`` (times ``scale``), v with
  ``value_channels``."""
  keys = jax.random.split(jax.random.key(seed), 3)
  q = scale * jax.random.normal(keys[0], shape)
  k = scale * jax.random.normal(keys[1], shape)
  v = jax.random.normal(keys[2], shape[:3] + (value_channels,))
  return q, k, v


# (name, q/k shape, value channels): odd and even, wide and tall, down to one pixel.
ATTENTION_SHAPES = (
    ("square", (1, 5, 5, 4), 6),
    ("wide", (2, 4, 7, 3), 5),
    ("tall", (2, 7, 3, 2), 4),
    ("single_row", (1, 1, 6, 2), 3),
    ("single_column", (1, 6, 1, 2), 3),
    ("single_pixel", (1, 1, 1, 2), 3),
)


def tiny_model_config(
    *, depth: int = 18, num_classes: int = 5, **fields
) -> ml_collections.ConfigDict:
  """The official CCNet shrunk to a CPU test's size (ResNet-18 layout, width 8, 16 channels);
  ``fields`` set top-level fields (``dtype``, ``remat``, ...)."""
  config = model_config("ccnet_r101_official", num_classes=num_classes, **fields)
  config.backbone.update(depth=depth, base_width=8)
  config.head.update(channels=16, out_channels=16)
  config.aux.channels = 16
  return config


def tiny_run_config(**train) -> ml_collections.ConfigDict:
  """The demo recipe (configs/synthetic.py) shrunk to seconds: the demo network at width 8
  with 16-channel heads, 16 training and 4 evaluation images of 33x33, whole-image
  evaluation, 6 steps of batch 8; ``train`` overrides fields of ``config.train``."""
  config = synthetic.get_config()
  config.model.backbone.base_width = 8
  config.model.head.out_channels = 16
  config.model.aux.channels = 16
  config.data.synthetic.update(num_train=16, num_eval=4, image_size=(33, 33))
  config.data.crop_size = (33, 33)
  config.eval.update(mode="whole", batch_size=4, crop_size=(33, 33), num_images_to_save=1)
  config.train.update(total_steps=6, global_batch_size=8, checkpoint_every=3, eval_every=0)
  config.train.update(log_every=1, num_summary_images=1)
  config.train.update(train)
  return config


def randomised(config: ml_collections.ConfigDict, seed: int) -> nnx.Module:
  """A model in eval mode whose every array (gamma and BatchNorm statistics too) is random."""
  model = model_dir.empty_module(lambda: construct_model(config))
  state = nnx.state(model, (nnx.Param, nnx.BatchStat))
  leaves, treedef = jax.tree.flatten(state.to_pure_dict())
  rng = np.random.default_rng(seed)
  leaves = [
      (rng.uniform(0.5, 1.5, x.shape) if x.ndim == 1 else rng.normal(0, 0.2, x.shape)).astype(
          np.float32
      )
      for x in leaves
  ]
  state.replace_by_pure_dict(jax.tree.unflatten(treedef, leaves))
  nnx.update(model, state)
  model.eval()
  return model


@functools.lru_cache(maxsize=4)
def tiny_ccnet(num_classes=5, dtype="float32"):
  """A ResNet-18-width-8 CCNet (R=1, no aux head) in eval mode with random numpy weights,
  built once per process; ``dtype="float64"`` (under ``jax.enable_x64``) holds the same
  float32 weights in float64, for a float64 truth.

  The structure comes from nnx.eval_shape and the weights from numpy (He-scaled
  normals, BatchNorm statistics 0 / 1, attention gamma nonzero so attention matters):
  initialising for real compiles one XLA program per parameter shape, which dominates
  a CPU test's run time.
  """
  config = tiny_model_config(num_classes=num_classes, dtype=dtype)
  config.head.recurrence = 1
  config.aux.enabled = False
  graphdef, abstract = nnx.split(nnx.eval_shape(lambda: construct_model(config)))
  rng = np.random.default_rng(0)

  def fill(path, leaf):
    name = jax.tree_util.keystr(path)
    if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):  # dropout keys
      return (
          jax.random.key(0) if leaf.shape == () else jax.random.split(jax.random.key(0), leaf.shape)
      )
    if not jnp.issubdtype(leaf.dtype, jnp.floating):  # key counters
      return jnp.asarray(np.zeros(leaf.shape, leaf.dtype))
    if "var" in name or "scale" in name:
      return jnp.asarray(np.ones(leaf.shape, leaf.dtype))
    if "mean" in name:
      return jnp.asarray(np.zeros(leaf.shape, leaf.dtype))
    fan_in = max(int(np.prod(leaf.shape[:-1])), 1)
    weights = np.asarray(rng.normal(size=leaf.shape) / np.sqrt(fan_in), np.float32)
    return jnp.asarray(weights, leaf.dtype)

  state = jax.tree_util.tree_map_with_path(fill, abstract)
  model = nnx.merge(graphdef, state)
  model.eval()
  return model


def flat_arrays(module: nnx.Module) -> dict[str, np.ndarray]:
  """Every parameter and BatchNorm statistic of ``module`` by its path."""
  return {k: np.asarray(v) for k, v in model_dir.flatten(model_dir.model_arrays(module)).items()}


def run_command(main, *arguments) -> int:
  """Runs ``main`` through ``cli.run`` in this process, as its script would; its exit status."""
  with pytest.raises(SystemExit) as exit_info:
    cli.run(main, ["command", *map(str, arguments)])
  return exit_info.value.code or 0


def sigterm_after_steps(monkeypatch, trainer_module, steps: int) -> None:
  """Makes the training loop of ``trainer_module`` receive SIGTERM during its step ``steps``
  (counted from the start of the invocation), as a preempted job would."""
  make_train_step = trainer_module.make_train_step

  def make(*args, **kwargs):
    train_step = make_train_step(*args, **kwargs)
    taken = []

    def step(state, batch):
      taken.append(1)
      if len(taken) == steps:
        signal.raise_signal(signal.SIGTERM)
      return train_step(state, batch)

    return step

  monkeypatch.setattr(trainer_module, "make_train_step", make)


# (id, in val, has a VOC palette PNG): SBD-only images have only SegmentationClassAug.
VOC_IDS = (
    ("2007_000032", True, True),
    ("2007_000039", False, True),
    ("2008_000002", False, False),
    ("2009_000012", False, False),
    ("2010_000038", True, True),
    ("2011_000003", False, False),
)


def _save_image(path, image):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  image.save(path, **({"quality": 100, "subsampling": 0} if path.endswith(".jpg") else {}))


def _write_ids(path, ids):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w") as f:
    f.write("".join(f"{i}\n" for i in ids))


def voc_tree(root, *, train_aug_file=True, constant_labels=False):
  """VOCdevkit/VOC2012 with JPEGs, SegmentationClassAug (L) and SegmentationClass (P) PNGs.

  Labels hold classes 0..20 and 255 borders; with ``constant_labels`` image k is all class k.
  Returns {id: (image, label)}.
  """
  rng = np.random.default_rng(0)
  voc = os.path.join(root, "VOCdevkit", "VOC2012")
  palette = dataset_info("voc").palette
  expected = {}
  for k, (image_id, _, has_palette_png) in enumerate(VOC_IDS):
    image = rng.integers(0, 256, (10, 14, 3)).astype(np.uint8)
    label = rng.integers(0, 21, (10, 14)).astype(np.uint8)
    label[4, :] = 255
    if constant_labels:
      label[:] = k
    _save_image(f"{voc}/JPEGImages/{image_id}.jpg", Image.fromarray(image))
    if has_palette_png:
      png = Image.fromarray(label, mode="P")
      png.putpalette(np.concatenate([palette.ravel(), np.full(3 * 235, 224, np.uint8)]).tolist())
      _save_image(f"{voc}/SegmentationClass/{image_id}.png", png)
    if not (has_palette_png and image_id == "2007_000039"):  # one VOC id only in SegClass
      _save_image(f"{voc}/SegmentationClassAug/{image_id}.png", Image.fromarray(label))
    expected[image_id] = (image, label)
  sets = f"{voc}/ImageSets/Segmentation"
  val = [i for i, in_val, _ in VOC_IDS if in_val]
  train = [i for i, in_val, palette_png in VOC_IDS if palette_png and not in_val]
  aug = [i for i, _, palette_png in VOC_IDS if not palette_png]
  _write_ids(f"{sets}/val.txt", val)
  if train_aug_file:
    _write_ids(f"{sets}/train_aug.txt", train + aug)
  else:  # mmsegmentation's converter: VOC's train.txt plus aug.txt
    _write_ids(f"{sets}/train.txt", train)
    _write_ids(f"{sets}/aug.txt", aug + train[:1])
  return expected
