"""The commands a user runs after training, fed what a user gets wrong: each answers in one line of
its own (never train.py's), refuses before any work, and leaves no file half-written.

The references: the user's files, byte for byte, after a refusal; the outputs of a first run,
after a second run into the same folder; JAX's own shape of the exported function.
"""

import json
import os
import resource
import signal
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from ccnet_jax import atomic
from ccnet_jax.data.labels import SYNTHETIC
from ccnet_jax.export import serving
from ccnet_jax.export.__main__ import main as export_main
from ccnet_jax.prediction.files import predict_paths
from tests.helpers import run_command
from tests.processes import ROOT, run_python

# ffmpeg and the size-limited predict.py are subprocesses (fork, then exec at once), which JAX's
# fork warning does not concern.
pytestmark = pytest.mark.filterwarnings("ignore:os.fork\\(\\) was called:RuntimeWarning")
TRAINING_WORDS = ("training", "checkpoint", "resume")


def one_error_line(stderr: str) -> str:
  lines = stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: "), stderr[-3000:]
  assert not any(word in lines[0] for word in TRAINING_WORDS), lines[0]
  return lines[0]


def no_partial_or_empty_files(folder) -> None:
  for root, dirs, files in os.walk(folder):
    for name in dirs + files:
      assert not atomic.is_partial(name), os.path.join(root, name)
    for name in files:
      assert os.path.getsize(os.path.join(root, name)) > 0, os.path.join(root, name)


@pytest.fixture(scope="module")
def image(tmp_path_factory):
  path = tmp_path_factory.mktemp("inputs") / "street.png"
  rng = np.random.default_rng(0)
  Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(path)
  return str(path)


def user_file(path, content=b"the user's own file\n"):
  path.write_bytes(content)
  return content


@pytest.mark.parametrize("command", ["predict", "export", "visualize"])
def test_an_out_that_is_a_file_is_named_in_the_commands_own_line(
    command, saved_model, image, tmp_path
):
  out = tmp_path / "out"
  content = user_file(out)
  model = saved_model.directory
  argv = {
      "predict": ["predict.py", f"--model={model}", f"--out={out}", image],
      "export": ["-m", "ccnet_jax.export", model, out, "--format=stablehlo"],
      "visualize": [
          *("-m", "ccnet_jax.visualize", "attention", f"--model={model}"),
          *(f"--image={image}", "--pixel=3,4", f"--out={out}"),
      ],
  }[command]
  result = run_python(*argv, one_device=True)
  assert result.returncode == 1, result.stderr[-3000:]
  assert str(out) in one_error_line(result.stderr)
  assert out.read_bytes() == content


def test_a_write_that_fails_names_the_file_and_what_predict_kept(saved_model, image, tmp_path):
  """A file size limit stands for a full disk: the overlay (the larger PNG) cannot be written."""
  out = tmp_path / "out"
  environment = {k: v for k, v in os.environ.items() if not k.startswith("JAX_COMPILATION")}

  def limit_file_size():  # In the child: files end at 4 KB (SIGXFSZ ignored, so writes fail).
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))

  environment.update(PYTHONPATH=ROOT)
  environment.pop("XLA_FLAGS", None)
  result = subprocess.run(
      [
          *(sys.executable, "predict.py", f"--model={saved_model.directory}"),
          *(f"--out={out}", "--noprogress", image),
      ],
      cwd=ROOT,
      env=environment,
      capture_output=True,
      text=True,
      timeout=300,
      preexec_fn=limit_file_size,
      check=False,
  )
  assert result.returncode == 1, result.stderr[-3000:]
  line = one_error_line(result.stderr)
  assert line.startswith(f"error: cannot write or read {out}"), line
  assert line.endswith("; the outputs written so far are complete; none is half-written."), line
  no_partial_or_empty_files(out)


class FakePredictor:
  """Labels every pixel 1: predict_paths's file handling without a network."""

  batch_size = 2
  dataset = SYNTHETIC

  def __call__(self, images):
    return [np.ones(image.shape[:2], np.uint8) for image in images]


@pytest.mark.parametrize("inside", ["", "predictions"])
def test_out_inside_the_input_folder_does_not_predict_its_own_outputs(tmp_path, inside):
  folder = tmp_path / "photos"
  folder.mkdir()
  rng = np.random.default_rng(1)
  for name in ("a", "b"):
    Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(folder / f"{name}.png")
  out = folder / inside
  for _ in range(2):  # The rerun finds the first run's outputs in the folder it reads.
    counts = predict_paths(FakePredictor(), [str(folder)], str(out), label_ids=True, progress=False)
    assert counts["images"] == 2, counts
  made = sorted(p.name for p in out.iterdir() if p.name not in ("a.png", "b.png"))
  assert made == sorted(
      f"{n}_{kind}.png" for n in "ab" for kind in ("labelIds", "overlay", "pred")
  ), made


def test_export_refuses_a_folder_holding_files_unless_overwrite(saved_model, tmp_path, capsys):
  out = tmp_path / "exported"
  out.mkdir()
  content = user_file(out / "model.mlir")
  argv = [saved_model.directory, out, "--format=stablehlo"]
  assert run_command(export_main, *argv) == 1
  assert "is not empty; name a new folder, or add --overwrite" in one_error_line(
      capsys.readouterr().err
  )
  assert sorted(os.listdir(out)) == ["model.mlir"] and (out / "model.mlir").read_bytes() == content

  assert run_command(export_main, *argv, "--overwrite") == 0
  capsys.readouterr()
  assert sorted(os.listdir(out)) == sorted(
      [serving.STABLEHLO_FILE, serving.STABLEHLO_TEXT_FILE, serving.SIGNATURE_FILE]
  )
  assert (out / "model.mlir").read_bytes() != content
  no_partial_or_empty_files(tmp_path)


@pytest.mark.parametrize(
    "flags, message",
    [
        (
            ["--format=tflite", "--dtype=bfloat16", "--height=8", "--width=8"],
            "--format=tflite cannot hold a bfloat16 model",
        ),
        (["--format=stablehlo", "--opset=17"], "--opset is an ONNX setting"),
        (["--format=onnx", "--dtype=bfloat16"], "--format=onnx cannot hold a bfloat16 model"),
        (["--format=tflite"], "needs a fixed input size"),
    ],
)
def test_what_a_format_cannot_hold_is_refused_before_any_work(
    saved_model, tmp_path, capsys, flags, message
):
  out = tmp_path / "exported"
  assert run_command(export_main, saved_model.directory, out, *flags) == 1
  assert message in one_error_line(capsys.readouterr().err)
  assert not os.path.exists(out) and os.listdir(tmp_path) == []


def test_serving_json_states_the_exported_shapes(saved_model, tmp_path):
  """With --batch=1 the input is ['1', 'h', 'w', '3']; the output's h and w are the exported
  function's own (floor((H + 1) / 8) + 1 for the official stem, not ceil(H / 8)), checked on
  sizes where the two differ."""
  out = tmp_path / "exported"
  summary = serving.export_model(saved_model.directory, out, format="stablehlo", batch=1)
  with open(out / serving.SIGNATURE_FILE, encoding="utf-8") as f:
    signature = json.load(f)
  assert signature["input"]["shape"] == ["1", "h", "w", "3"]
  assert summary["output"]["shape"] == signature["output"]["shape"]
  assert "align_corners=True" in signature["output"]["layout"]
  with open(out / serving.STABLEHLO_FILE, "rb") as f:
    exported = jax.export.deserialize(bytearray(f.read()))
  expressions = signature["output"]["shape"][1:3]
  functions = {"floordiv": lambda a, b: a // b}
  for height, width in ((15, 23), (16, 9)):
    logits = exported.call(jnp.zeros((1, height, width, 3), jnp.float32))
    sizes = {"h": height, "w": width}
    written = [eval(e, functions, sizes) for e in expressions]  # pylint: disable=eval-used
    assert list(logits.shape) == [1, *written, SYNTHETIC.num_classes]
    assert written == [(height + 1) // 8 + 1, (width + 1) // 8 + 1]


def write_video(path, frames=30):
  import imageio.v2 as imageio  # pylint: disable=import-outside-toplevel

  rng = np.random.default_rng(2)
  with imageio.get_writer(path, fps=10, macro_block_size=1) as writer:
    for _ in range(frames):
      writer.append_data(
          np.kron(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8), np.ones((8, 8, 1), np.uint8))
      )


def test_a_corrupt_video_is_one_line_and_a_short_one_is_counted(tmp_path, capsys):
  corrupt = tmp_path / "corrupt.mp4"
  corrupt.write_bytes(np.random.default_rng(0).integers(0, 256, 3000, dtype=np.uint8).tobytes())
  with pytest.raises(ValueError) as error:
    predict_paths(FakePredictor(), [str(corrupt)], str(tmp_path / "a"), progress=False)
  message = str(error.value)
  assert message.startswith(f"cannot read video {corrupt}: ") and "\n" not in message, message
  assert "ffmpeg version" not in message and "moov atom not found" in message, message
  no_partial_or_empty_files(tmp_path / "a")

  whole = tmp_path / "whole.mkv"  # Matroska: a file cut in half still decodes its first frames.
  write_video(whole)
  data = whole.read_bytes()
  cut = tmp_path / "cut.mkv"
  cut.write_bytes(data[: len(data) // 2])
  counts = predict_paths(FakePredictor(), [str(cut)], str(tmp_path / "b"), progress=False)
  lines = capsys.readouterr().err.strip().splitlines()
  read = counts["frames"]
  assert 0 < read < 30 and lines == [
      f"warning: {cut} is cut short: {read} of the 30 frames its duration declares could be"
      f" read; its outputs hold those {read}."
  ], lines
  no_partial_or_empty_files(tmp_path / "b")
  predict_paths(FakePredictor(), [str(whole)], str(tmp_path / "c"), progress=False)
  assert capsys.readouterr().err == ""
