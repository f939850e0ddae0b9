"""Prediction on files (predict.py): folders of odd-sized images and videos in, colour / overlay /
label-id files out, labels checked against a forward pass upsampled by torch and against eval's
inference."""

import functools
import os
import subprocess
import sys

import imageio.v2 as imageio
import numpy as np
import pytest
from PIL import Image

from ccnet_jax.data.labels import SYNTHETIC
from ccnet_jax.evaluation.evaluator import model_predict_fn
from ccnet_jax.evaluation.inference import predict_logits
from ccnet_jax.loading import load_model
from ccnet_jax.prediction import media
from ccnet_jax.prediction.files import predict_paths
from ccnet_jax.prediction.predictor import Predictor
from tests import export_reference, numerics, torch_reference
from tests.helpers import ROOT
from tests.processes import HANG_TIMEOUT

torch = pytest.importorskip("torch")
# ffmpeg runs as a subprocess (fork, then exec at once), which JAX's fork warning does not concern.
pytestmark = pytest.mark.filterwarnings("ignore:os.fork\\(\\) was called:RuntimeWarning")

NUM_CLASSES = SYNTHETIC.num_classes


@pytest.fixture(scope="module")
def predictor(saved_model):
  """The saved model, loaded from its workdir; batches of 2."""
  return Predictor(load_model(saved_model.workdir), batch_size=2)


def smooth_image(rng, height, width):
  """Blocky colours (not per-pixel noise), so that lossy video coding keeps them close."""
  coarse = rng.integers(0, 256, (height // 8 + 1, width // 8 + 1, 3))
  return np.repeat(np.repeat(coarse, 8, 0), 8, 1)[:height, :width].astype(np.uint8)


def reference_logits(saved, images):
  """(B, H, W, K): the network on the normalised images, upsampled by torch (bilinear,
  align_corners=True, as the official evaluation)."""
  logits = export_reference.reference_logits(saved.model, saved.preprocessing, images)
  return torch_reference.resize_align_corners(np.array(logits), images.shape[1:3])


def truth_logits(saved, images):
  """The same in float64: the same weights in a float64 network, upsampled in float64."""
  logits = export_reference.truth_logits(saved.model, saved.config, saved.preprocessing, images)
  return torch_reference.resize_align_corners(np.array(logits), images.shape[1:3])


def assert_labels_match(labels, logits, truth):
  """Labels equal the argmax of ``logits`` (float32, ``truth`` their float64 value) wherever
  their top two are further apart than float32 rounding could move them
  (``numerics.decided_pixels``); near-ties are excluded rather than counted."""
  error = np.abs(np.asarray(logits, np.float64) - truth).max()
  decided = numerics.decided_pixels(logits, error, factor=export_reference.FACTOR)
  assert decided.mean() > 0.95
  np.testing.assert_array_equal(labels[decided], logits.argmax(-1)[decided])


def test_folder_of_odd_sizes_writes_colours_overlays_and_label_ids(
    saved_model, predictor, tmp_path
):
  rng = np.random.default_rng(0)
  sizes = {"a": (37, 53), "b": (37, 53), "c": (29, 41), os.path.join("sub", "d"): (45, 23)}
  folder = tmp_path / "images"
  images = {}
  for name, size in sizes.items():
    images[name] = rng.integers(0, 256, size + (3,), dtype=np.uint8)
    (folder / os.path.dirname(name)).mkdir(parents=True, exist_ok=True)
    Image.fromarray(images[name]).save(folder / f"{name}.png")
  (folder / "broken.png").write_bytes(b"not a png")
  (folder / "notes.txt").write_text("not an image: ignored in a folder")
  out = tmp_path / "out"

  counts = predict_paths(
      predictor, [str(folder)], str(out), label_ids=True, on_error="skip", progress=False
  )

  assert counts == {"images": 4, "videos": 0, "frames": 0, "skipped": 1}
  for name, image in images.items():
    stem = out / name.replace(os.sep, "_")
    labels = np.asarray(Image.open(f"{stem}_labelIds.png"))
    assert labels.shape == image.shape[:2]
    assert_labels_match(
        labels,
        reference_logits(saved_model, image[None])[0],
        truth_logits(saved_model, image[None])[0],
    )
    color = np.asarray(Image.open(f"{stem}_pred.png"))
    np.testing.assert_array_equal(color, SYNTHETIC.palette[labels])
    blended = np.round(0.5 * image.astype(np.float64) + 0.5 * SYNTHETIC.palette[labels])
    np.testing.assert_allclose(np.asarray(Image.open(f"{stem}_overlay.png")), blended, atol=1)


def test_video_frames_in_equal_frames_out_and_labels_equal_eval_inference(
    saved_model, predictor, tmp_path
):
  rng = np.random.default_rng(1)
  frames_in = [smooth_image(rng, 40, 56) for _ in range(5)]
  video = str(tmp_path / "clip.mp4")
  imageio.mimwrite(video, frames_in, fps=10, codec="libx264", macro_block_size=8)
  out = tmp_path / "out"

  counts = predict_paths(predictor, [video], str(out), label_ids=True, progress=False)

  assert counts == {"images": 0, "videos": 1, "frames": 5, "skipped": 0}
  for suffix in ("pred", "overlay"):
    assert imageio.get_reader(str(out / f"clip_{suffix}.mp4")).count_frames() == 5
  label_files = sorted(os.listdir(out / "clip_labelIds"))
  assert label_files == [f"{i:06d}.png" for i in range(5)]
  # Evaluation's inference on the decoded frames (5 frames: batches of 2, 2 and a padded 1).
  decoded = np.stack([frame[..., :3] for frame in imageio.mimread(video)])
  predict_fn, state = model_predict_fn(saved_model.model)
  inputs = export_reference.normalised(saved_model.preprocessing, decoded, np.float32)
  logits = np.asarray(
      predict_logits(functools.partial(predict_fn, state), inputs, num_classes=NUM_CLASSES)
  )
  truth = truth_logits(saved_model, decoded)
  for index, name in enumerate(label_files):
    labels = np.asarray(Image.open(out / "clip_labelIds" / name))
    assert_labels_match(labels, logits[index], truth[index])


def test_cli_stops_on_a_bad_input_with_one_line_naming_it(saved_model, tmp_path):
  folder = tmp_path / "images"
  folder.mkdir()
  (folder / "broken.jpg").write_bytes(b"\xff\xd8 truncated")
  result = subprocess.run(
      [
          sys.executable,
          "predict.py",
          f"--model={saved_model.workdir}",
          str(folder),
          "--out",
          str(tmp_path / "out"),
          "--noprogress",
      ],
      cwd=ROOT,
      capture_output=True,
      text=True,
      env={**os.environ, "PYTHONPATH": ROOT},
      timeout=HANG_TIMEOUT,
  )
  assert result.returncode == 1, result.stderr
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith("error: cannot decode image") and "broken.jpg" in last, result.stderr


def test_bad_arguments_name_the_file(tmp_path):
  (tmp_path / "empty").mkdir()
  (tmp_path / "notes.txt").write_text("x")
  with pytest.raises(ValueError, match="empty: the folder holds no image"):
    media.expand_argument(str(tmp_path / "empty"))
  with pytest.raises(ValueError, match=r"notes\.txt: unknown extension '\.txt'"):
    media.expand_argument(str(tmp_path / "notes.txt"))
  with pytest.raises(FileNotFoundError, match="no file matches"):
    media.expand_argument(str(tmp_path / "*.png"))
  with pytest.raises(FileNotFoundError, match="missing.png: no such file"):
    media.expand_argument(str(tmp_path / "missing.png"))
  (tmp_path / "fake.mp4").write_bytes(b"not a video")
  with pytest.raises(ValueError, match="cannot read video .*fake.mp4"):
    media.video_info(str(tmp_path / "fake.mp4"))
  clash = [media.Input("x/a.png", "a"), media.Input("y/a.jpg", "a")]
  with pytest.raises(ValueError, match="y/a.jpg and x/a.png would both write"):
    media.check_unique_names(clash)
