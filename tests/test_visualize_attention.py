"""Attention maps: each loop's weights against the numpy reference on the model's own features,
loop-1 and effective maps against explicit (HW x HW) attention matrices, figures written."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from PIL import Image

from ccnet_jax.data.labels import SYNTHETIC
from ccnet_jax.models import model_dir
from ccnet_jax.models.preprocessing import IMAGENET
from ccnet_jax.models.registry import construct_model
from ccnet_jax.visualize.__main__ import main as visualize_main
from ccnet_jax.visualize.attention import model_attention, pixel_attention, save_attention
from tests import numerics, reference
from tests.helpers import randomised, run_command, tiny_model_config

IMAGE_SIZE = (37, 53)  # Grid 5 x 7 at output stride 8.
PIXELS = [(10, 20), (36, 0), (0, 52)]


def normalized(image):
  return (image.astype(np.float32) - np.float32(IMAGENET.mean)) / np.float32(IMAGENET.std)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
  """A random R=2 CCNet with 6 classes, its image and the stage-4 features of the image.

  Random weights and BatchNorm statistics blow the features up (~1e5), which would saturate
  the softmax; the query and key projections are redrawn at the scale of the head's input
  (std 1 / (rms * sqrt(C)), no bias), so the energies are O(1) and no weight underflows.
  """
  config = tiny_model_config(num_classes=SYNTHETIC.num_classes)
  assert config.head.recurrence == 2
  model = randomised(config, seed=5)
  image = np.random.default_rng(0).integers(0, 256, IMAGE_SIZE + (3,), dtype=np.uint8)
  stage4 = model.backbone(jnp.asarray(normalized(image)[None]))[3]
  features = np.asarray(model.head.conva(stage4))
  rng = np.random.default_rng(6)
  scale = 1 / (np.sqrt(np.mean(features**2)) * np.sqrt(features.shape[-1]))
  for projection in (model.head.attention.query, model.head.attention.key):
    projection.kernel.value = jnp.asarray(
        rng.normal(0, scale, projection.kernel.shape), jnp.float32
    )
    projection.bias.value = jnp.zeros_like(projection.bias.value)
  directory = tmp_path_factory.mktemp("attention") / "model"
  model_dir.save_model(directory, model, config, preprocessing=None)
  return str(directory), model, image, stage4


@pytest.fixture(scope="module")
def computed(saved):
  _, model, image, _ = saved
  return model_attention(model, image, IMAGENET, SYNTHETIC.num_classes)


def reference_loops(model, stage4, dtype=np.float64):
  """Each loop's weights from tests/reference.py on the q, k, v the head computes."""
  attention, features, loops = model.head.attention, model.head.conva(stage4), []
  for _ in range(2):
    q, k, v = attention.query(features), attention.key(features), attention.value(features)
    loops.append(reference.criss_cross_attention(q, k, v, return_attention=True, dtype=dtype)[1][0])
    features = attention(features)
  return loops


def dense_matrix(loop):
  """(HW, HW): row p holds pixel p's weights on every pixel (zero off its criss-cross)."""
  height, width = loop.shape[:2]
  matrix = np.zeros((height * width, height * width))
  for h in range(height):
    for w in range(width):
      for g, u in reference.criss_cross_neighbours(height, width, h, w):
        slot = g if u == w and g != h else height + u
        matrix[h * width + w, g * width + u] += loop[h, w, slot]
  return matrix


def float64_loops(model, image):
  """Each loop's weights with the whole network in float64, from the image on: the truth."""
  with jax.enable_x64(True):
    config = tiny_model_config(num_classes=SYNTHETIC.num_classes, dtype="float64")
    model64 = model_dir.empty_module(lambda: construct_model(config))
    nnx.update(model64, numerics.in_float64(nnx.state(model)))
    model64.eval()
    x = (image - np.array(IMAGENET.mean)) / np.array(IMAGENET.std)
    stage4 = model64.backbone(jnp.asarray(x[None], jnp.float64))[3]
    return [np.asarray(loop) for loop in reference_loops(model64, stage4)]


@pytest.mark.numeric
def test_each_loop_matches_the_reference_attention(saved, computed):
  """The maps of the whole network's jitted float32 run, against the network in float64,
  allowed 4x the error of the reference loops in float32 on the float32 head's q, k
  (tests/numerics.py). Both float32 runs go through the same random backbone, whose
  features (~1e5) carry its rounding into the energies; measured up to 1.4x (both XLA
  configurations of README's test command)."""
  _, model, image, stage4 = saved
  _, loops = computed
  assert [loop.shape for loop in loops] == [(5, 7, 12)] * 2
  numerics.assert_as_accurate_as(
      loops, reference_loops(model, stage4, np.float32), float64_loops(model, image), factor=4
  )


@pytest.mark.numeric
def test_loop1_lies_on_the_criss_cross_and_loop2_reaches_every_pixel(computed):
  _, loops = computed
  m1, m2 = dense_matrix(loops[0]), dense_matrix(loops[1])
  for pixel in PIXELS:
    maps = pixel_attention(loops, pixel, IMAGE_SIZE)
    y, x = (round(p * (g - 1) / (s - 1)) for p, s, g in zip(pixel, IMAGE_SIZE, (5, 7)))
    assert maps.grid_pixel == (y, x)
    off_cross = np.ones((5, 7), bool)
    off_cross[y, :] = off_cross[:, x] = False
    assert np.all(maps.loop1[off_cross] == 0)
    assert np.all(maps.loop1[~off_cross] > 0)
    # float32 weights over the criss-cross (H + W entries).
    np.testing.assert_allclose(maps.loop1.sum(), 1, atol=numerics.softmax_sum_tolerance(5 + 7))
    np.testing.assert_allclose(maps.loop1.ravel(), m1[y * 7 + x], atol=1e-12)
    assert np.all(maps.effective > 1e-12)
    # A mix of loop-2 weights over loop-1 rows: both errors add.
    tolerance = 2 * numerics.softmax_sum_tolerance(5 + 7)
    np.testing.assert_allclose(maps.effective.sum(), 1, atol=tolerance)
    np.testing.assert_allclose(maps.effective.ravel(), (m2 @ m1)[y * 7 + x], atol=1e-12)


def test_figure_shows_image_maps_and_prediction(saved, computed, tmp_path):
  directory, _, image, _ = saved
  prediction, _ = computed
  (tmp_path / "in").mkdir()
  Image.fromarray(image).save(tmp_path / "in" / "scene.png")
  path = save_attention(
      directory, str(tmp_path / "in" / "scene.png"), PIXELS[:2], str(tmp_path / "out")
  )
  assert path == str(tmp_path / "out" / "scene_attention.png")
  figure = np.asarray(Image.open(path))
  height, width = IMAGE_SIZE
  assert figure.shape == (2 * height + 4, 4 * width + 3 * 4, 3)
  np.testing.assert_array_equal(figure[:height, -width:], SYNTHETIC.palette[prediction])
  # The image panel is the image, but for the circle around the pixel.
  assert (figure[:height, :width] == image).all(-1).mean() > 0.95


def test_cli_names_a_pixel_outside_the_image(saved, tmp_path, capsys):
  directory, _, image, _ = saved
  Image.fromarray(image).save(tmp_path / "scene.png")
  status = run_command(
      visualize_main,
      "attention",
      f"--model={directory}",
      f"--image={tmp_path / 'scene.png'}",
      "--pixel=37,0",
      f"--out={tmp_path / 'out'}",
  )
  assert status == 1
  assert capsys.readouterr().err.strip() == (
      "error: --pixel=37,0 lies outside the 37x53 image (rows 0..36, columns 0..52)."
  )
  assert not os.path.exists(tmp_path / "out")
