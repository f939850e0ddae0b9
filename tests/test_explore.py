"""The explorer's HTTP API on a live server: labels as predict.py's, attention maps as the CLI
figure's, one analysis per image, concurrent requests kept apart, one clear error per bad
request, and the command's start and its errors."""

import base64
import concurrent.futures
import io
import json
import os
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request

import jax
import numpy as np
import pytest
from PIL import Image

from ccnet_jax.cli import run_user_command
from ccnet_jax.evaluation.inference import InferenceSettings
from ccnet_jax.explore.backend import ExploredModel, has_criss_cross
from ccnet_jax.explore.launch import explore, inference_settings
from ccnet_jax.explore.server import make_app, serving
from ccnet_jax.explore.session import Explorer, Limits, RequestError
from ccnet_jax.loading import load_model
from ccnet_jax.prediction.predictor import Predictor
from ccnet_jax.visualize.attention import heat, model_attention, pixel_attention, upsample
from tests import numerics
from tests.explore_model import demo_scene, shared_stripe_reader
from tests.helpers import tiny_model_config
from tests.processes import ROOT

FACTOR = (
    4  # Attention maps against float64 (tests/numerics.py): measured 1.0x, both configurations.
)
CROP = (128, 64)  # Sliding windows that tile the 256x64 demo scenes.
LIMITS = Limits(max_bytes=200_000, max_pixels=300 * 300)


def png(image):
  buffer = io.BytesIO()
  Image.fromarray(image).save(buffer, format="PNG")
  return buffer.getvalue()


def post(url, body, **query):
  """(status, body bytes, content type) of a POST; errors are answers too."""
  address = url + "?" + "&".join(f"{k}={v}" for k, v in query.items()) if query else url
  request = urllib.request.Request(address, data=body, method="POST")
  try:
    with urllib.request.urlopen(request, timeout=120) as response:
      return response.status, response.read(), response.headers["content-type"]
  except urllib.error.HTTPError as error:
    return error.code, error.read(), error.headers["content-type"]


def get(url):
  try:
    with urllib.request.urlopen(url, timeout=60) as response:
      return response.status, response.read()
  except urllib.error.HTTPError as error:
    return error.code, error.read()


@pytest.fixture(scope="module")
def model_path(tmp_path_factory, worker_id):
  return shared_stripe_reader(tmp_path_factory, worker_id)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
  root = tmp_path_factory.mktemp("images")
  (root / "street").mkdir()
  Image.fromarray(demo_scene(5)["image"]).save(root / "street" / "scene.png")
  (root / "notes.txt").write_text("not an image")
  return root


@pytest.fixture(scope="module")
def explorer(model_path):
  return Explorer(ExploredModel(model_path, settings=InferenceSettings(crop_size=CROP)), LIMITS)


@pytest.fixture(scope="module")
def url(explorer, folder):
  with serving(make_app(explorer, str(folder))) as base:
    yield base


def assert_same_labels(got, want, probabilities):
  """Equal but at near-ties: float32 sums in another order move probabilities by ~1e-7, so
  only pixels whose top two classes are within 1e-5 may differ."""
  top2 = np.sort(probabilities, axis=-1)[..., -2:]
  decided = top2[..., 1] - top2[..., 0] > 1e-5
  assert decided.mean() > 0.99
  np.testing.assert_array_equal(got[decided], want[decided])


@pytest.mark.parametrize("mode", ["whole", "sliding"])
def test_predict_gives_the_labels_of_predict_py(model_path, explorer, url, mode):
  image = demo_scene(0)["image"]
  status, body, kind = post(url + "predict", png(image), mode=mode)
  assert (status, kind) == (200, "image/png")
  labels = np.asarray(Image.open(io.BytesIO(body)))
  assert labels.dtype == np.uint8 and labels.shape == image.shape[:2]
  settings = InferenceSettings(mode=mode, crop_size=CROP)
  reference = Predictor(load_model(model_path), settings=settings)([image])[0]
  probabilities = explorer.analysis(png(image), mode).probabilities
  assert_same_labels(labels, reference, probabilities)

  status, body, kind = post(url + "predict", png(image), mode=mode, format="json")
  assert (status, kind) == (200, "application/json")
  answer = json.loads(body)
  np.testing.assert_array_equal(np.array(answer["labels"]), labels)
  assert (answer["height"], answer["width"], answer["mode"]) == (256, 64, mode)
  assert answer["model"]["recurrence"] == 2
  assert [c["name"] for c in answer["model"]["classes"]][:2] == ["background", "cue stripe"]


@pytest.mark.numeric
def test_attention_gives_the_maps_of_the_cli_figure(model_path, url):
  image = demo_scene(1)["image"]
  pixel = (200, 37)
  status, body, _ = post(url + "attention", png(image), y=pixel[0], x=pixel[1])
  assert status == 200
  answer = json.loads(body)
  loaded = load_model(model_path)
  prediction, loops = model_attention(loaded.model, image, loaded.preprocessing, 6)
  want = pixel_attention(loops, pixel, image.shape[:2])
  assert answer["pixel"] == list(pixel) and answer["grid_pixel"] == list(want.grid_pixel)
  assert answer["grid_size"] == list(want.loop1.shape) and answer["image_size"] == [256, 64]
  # Two compiled programs of one float32 network, summing in other orders: the answer is
  # held to the float64 network on the same input, allowed FACTOR x the CLI's own error.
  with jax.enable_x64(True):
    twin = load_model(model_path, dtype="float64")
    _, loops64 = model_attention(twin.model, image, twin.preprocessing, 6)
  truth = pixel_attention(loops64, pixel, image.shape[:2])
  numerics.assert_as_accurate_as(
      {"loop1": np.array(answer["loop1"]), "effective": np.array(answer["effective"])},
      {"loop1": want.loop1, "effective": want.effective},
      {"loop1": truth.loop1, "effective": truth.effective},
      factor=FACTOR,
  )
  loop1 = np.array(answer["loop1"])
  off_cross = np.ones(loop1.shape, bool)
  off_cross[want.grid_pixel[0], :] = off_cross[:, want.grid_pixel[1]] = False
  assert np.all(loop1[off_cross] == 0)
  # float32 weights over the h + w criss-cross; the effective ones mix two loops' weights.
  entries = sum(answer["grid_size"])
  np.testing.assert_allclose(loop1.sum(), 1, atol=numerics.softmax_sum_tolerance(entries))
  np.testing.assert_allclose(
      np.sum(answer["effective"]), 1, atol=2 * numerics.softmax_sum_tolerance(entries)
  )
  # The heat images are the CLI figure's colours of the answer's own numbers.
  for name in ("loop1", "effective"):
    data = base64.b64decode(answer["heat"][name].split(",", 1)[1])
    shown = np.asarray(Image.open(io.BytesIO(data)))
    np.testing.assert_array_equal(shown, heat(upsample(np.array(answer[name]), (256, 64))))
  probabilities = np.array(answer["probabilities"])
  np.testing.assert_allclose(
      probabilities.sum(), 1, atol=numerics.softmax_sum_tolerance(len(probabilities))
  )
  assert answer["label"] == int(probabilities.argmax())
  if np.sort(probabilities)[-1] - np.sort(probabilities)[-2] > 1e-5:
    assert answer["label"] == prediction[pixel]


def test_clicks_read_the_analysis_kept_for_the_image(url, explorer):
  images = [demo_scene(index)["image"] for index in (2, 3)]
  before = explorer.analyses_computed
  assert post(url + "predict", png(images[0]))[0] == 200
  for y, x in [(0, 0), (255, 63), (130, 20), (7, 50)]:
    assert post(url + "attention", png(images[0]), y=y, x=x)[0] == 200
  assert explorer.analyses_computed == before + 1
  assert post(url + "attention", png(images[1]), y=5, x=5)[0] == 200
  assert explorer.analyses_computed == before + 2
  assert (256, 64, "whole") in explorer.model.compiled
  assert len([key for key in explorer.model.compiled if key[2] == "whole"]) == 1


def test_concurrent_requests_get_their_own_answers(url):
  """Eight images, predicted and clicked from sixteen threads at once, each answer equal to the
  answer the same request gets alone."""
  requests = []
  for index in range(8):
    body = png(demo_scene(8 + index)["image"])
    requests.append(("predict", body, {}))
    requests.append(("attention", body, {"y": 31 * index, "x": 7 * index}))
  with concurrent.futures.ThreadPoolExecutor(16) as pool:
    together = list(pool.map(lambda r: post(url + r[0], r[1], **r[2]), requests))
  alone = [post(url + name, body, **query) for name, body, query in requests]
  assert [status for status, _, _ in together] == [200] * 16
  assert together == alone
  labels = [np.asarray(Image.open(io.BytesIO(body))) for _, body, _ in together[::2]]
  assert len({label.tobytes() for label in labels}) == 8


def damaged_png():
  return png(demo_scene(0)["image"])[:2000]


BAD_REQUESTS = [
    (
        "predict",
        b"hello",
        {},
        400,
        "the request body is not an image file (PNG, JPEG, BMP, TIFF, WebP, ...).",
    ),
    ("predict", b"", {}, 400, "no image in the request body: send the bytes of an image file."),
    (
        "predict",
        b"\0" * 250_000,
        {},
        413,
        "the upload of 244 KiB is over the limit of 195 KiB (--max_upload_mb).",
    ),
    (
        "predict",
        png(np.zeros((400, 300, 3), np.uint8)),
        {},
        413,
        "the image is 300x400 pixels, over the limit of 0.1 megapixels (--max_megapixels).",
    ),
    ("predict", "sample", {"format": "gif"}, 400, "format='gif' is not one of png, json."),
    ("predict", "sample", {"mode": "tiled"}, 400, "mode='tiled' is not one of whole, sliding."),
    (
        "attention",
        "sample",
        {"y": 256, "x": 3},
        400,
        "pixel y=256, x=3 lies outside the 256x64 image (rows 0..255, columns 0..63).",
    ),
    (
        "attention",
        "sample",
        {"y": 3, "x": -1},
        400,
        "pixel y=3, x=-1 lies outside the 256x64 image (rows 0..255, columns 0..63).",
    ),
    (
        "attention",
        "sample",
        {"y": 3},
        400,
        "give the pixel as ?y=ROW&x=COLUMN (integers, 0 at the top left).",
    ),
    (
        "attention",
        "sample",
        {"y": 3, "x": "1.5"},
        400,
        "pixel y='3', x='1.5': both must be integers.",
    ),
]


@pytest.mark.parametrize(
    "route, body, query, status, message", BAD_REQUESTS, ids=[r[4][:40] for r in BAD_REQUESTS]
)
def test_a_bad_request_gets_one_clear_error(url, route, body, query, status, message):
  body = png(demo_scene(0)["image"]) if body == "sample" else body
  got_status, got_body, kind = post(url + route, body, **query)
  assert (got_status, kind) == (status, "application/json")
  assert json.loads(got_body) == {"error": message}


def test_damaged_files_wrong_routes_and_the_server_still_answers(url):
  status, body, _ = post(url + "predict", damaged_png())
  assert status == 400
  assert json.loads(body)["error"].startswith("the request body is a damaged image file:")
  assert get(url + "predict")[0] == 405
  assert json.loads(get(url + "predict")[1]) == {"error": "GET /predict: Method Not Allowed"}
  assert json.loads(get(url + "demo/999")[1]) == {"error": "demo scene 999 does not exist (0..63)."}
  status, body = get(url + "model")
  assert status == 200 and json.loads(body)["num_classes"] == 6


def test_a_failure_inside_is_one_answer_and_the_server_goes_on(url, explorer, monkeypatch):
  def fail(image, mode):
    raise RuntimeError("out of memory")

  body = png(demo_scene(30)["image"])
  monkeypatch.setattr(explorer.model, "analyse", fail)
  status, answer, _ = post(url + "predict", body)
  assert (status, json.loads(answer)) == (
      500,
      {"error": "internal error: RuntimeError: out of memory"},
  )
  monkeypatch.undo()
  assert post(url + "predict", body)[0] == 200


@pytest.mark.parametrize(
    "head, has_attention",
    [
        ({"attention": "criss_cross", "recurrence": 2}, True),
        ({"attention": "criss_cross", "recurrence": 0}, False),
        ({"attention": "non_local", "recurrence": 1}, False),
    ],
)
def test_which_models_have_criss_cross_maps(head, has_attention):
  config = tiny_model_config(num_classes=6)
  config.head.update(head)
  assert has_criss_cross(config) == has_attention


def test_model_without_attention_explains_why_it_has_no_maps(explorer, monkeypatch):
  monkeypatch.setattr(explorer.model, "has_attention", False)
  with pytest.raises(RequestError) as error:
    explorer.attention(png(demo_scene(0)["image"]), "1", "1")
  assert error.value.status == 400
  assert error.value.message.startswith("this model has no criss-cross attention")


def test_page_demo_scenes_and_folder_images_are_served_without_the_internet(url, folder):
  status, page = get(url)
  assert status == 200 and b"explorer.js" in page
  for asset in ("", "static/explorer.js", "static/explorer.css"):
    status, text = get(url + asset)
    assert status == 200
    assert b"http://" not in text and b"https://" not in text and b"//fonts" not in text
  status, body = get(url + "demo/3")
  assert status == 200
  np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(body))), demo_scene(3)["image"])
  meta = json.loads(get(url + "model")[1])
  assert meta["images"] == ["street/scene.png"] and meta["demo_scenes"] == 8
  status, body = get(url + "images/street/scene.png")
  assert status == 200 and body == (folder / "street" / "scene.png").read_bytes()
  assert get(url + "images/notes.txt")[0] == 404
  assert get(url + "images/..%2F..%2Fetc%2Fpasswd")[0] == 404
  status, body = get(url + "heat-scale.png")
  assert status == 200 and Image.open(io.BytesIO(body)).size == (256, 12)


def explore_error(capsys, model, **settings):
  """The one line that ``explore`` ends with, as the command prints it."""
  with pytest.raises(SystemExit) as exit_info:
    run_user_command(lambda: explore(model, **settings))
  assert exit_info.value.code == 1
  return capsys.readouterr().err


def test_missing_web_libraries_are_one_line(monkeypatch, capsys, model_path):
  monkeypatch.setitem(sys.modules, "uvicorn", None)
  assert explore_error(capsys, model_path) == (
      "error: python -m ccnet_jax.explore needs starlette and uvicorn (uvicorn is missing):"
      " python -m pip install -r requirements-explore.txt\n"
  )


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"images": "/no/such/folder"}, "--images=/no/such/folder: no such folder."),
        ({"port": 0}, "/no/such/model: no such directory."),
    ],
)
def test_a_bad_setting_is_one_line(capsys, settings, message):
  assert explore_error(capsys, "/no/such/model", **settings) == f"error: {message}\n"


@pytest.mark.parametrize(
    "crop_size, overlap, message",
    [
        ((769,), 0.5, "--crop_size=(769,) must be two positive sizes (height, width)."),
        ((769, 769), 1.0, "--overlap=1.0 must be in [0, 1)."),
    ],
)
def test_bad_inference_flags_are_named(crop_size, overlap, message):
  with pytest.raises(ValueError) as error:
    inference_settings("sliding", crop_size, overlap)
  assert str(error.value) == message


def test_a_taken_port_is_one_line(capsys, model_path):
  with socket.socket() as taken:
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    port = taken.getsockname()[1]
    assert explore_error(capsys, model_path, port=port) == (
        f"error: --host=127.0.0.1 --port={port}: cannot listen there (Address already in use);"
        " choose another --port (0 picks a free one) or --host.\n"
    )


def test_the_command_serves_until_interrupted(model_path):
  environment = dict(os.environ, PYTHONPATH=ROOT)
  process = subprocess.Popen(
      [sys.executable, "-m", "ccnet_jax.explore", f"--model={model_path}", "--port=0"],
      cwd=ROOT,
      env=environment,
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
  )
  try:
    line = process.stdout.readline()
    assert line.startswith(
        f"Exploring model directory {model_path} (synthetic classes) at http://127.0.0.1:"
    )
    base = line.split(" at ")[1].split(" ")[0]
    status, body = get(base + "model")
    assert status == 200 and json.loads(body)["source"] == f"model directory {model_path}"
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=60) == 0
  finally:
    process.kill()
    process.wait()
  assert process.stderr.read() == ""
