"""The explorer's page in a real browser (Debian's headless Chromium driven by Playwright): pick
a demo scene, see its prediction, click a shape pixel, and read back what the page shows.

The model reads the cue stripe by construction (tests/explore_model.py), so a shape pixel's
loop-1 weight lies on the stripe of its own column; the page must show the maps of the pixel
clicked, equal to what the API answers for that pixel. The test leaves a screenshot;
``CCNET_JAX_EXPLORER_SCREENSHOT=docs/explorer.png`` writes it there, and
``CCNET_JAX_EXPLORER_MODEL=DIR`` runs the same test on another model of the synthetic classes
(README's screenshot is that of the trained demo model).
"""

import io
import json
import os
import tempfile
import urllib.request

import numpy as np
import pytest
from PIL import Image
from playwright.sync_api import sync_playwright

from ccnet_jax.data.labels import SYNTHETIC
from ccnet_jax.explore.backend import ExploredModel
from ccnet_jax.explore.server import make_app, serving
from ccnet_jax.explore.session import Explorer
from ccnet_jax.visualize.attention import grid_position, heat, upsample
from tests.explore_model import demo_scene, shared_stripe_reader, stripe_rows

CHROMIUM = "/usr/bin/chromium"
# Headless, no sandbox (root in CI), and none of Chromium's own calls home: on a closed network
# they are refused, and the page must need nothing but the explorer's server.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCENE = 3  # Its shape is the largest of the first eight scenes.
SHAPES = (2, 3, 4)

READ_IMAGE = """(selector) => {
  const image = document.querySelector(selector);
  const canvas = document.createElement("canvas");
  canvas.width = image.naturalWidth;
  canvas.height = image.naturalHeight;
  const context = canvas.getContext("2d");
  context.drawImage(image, 0, 0);
  return Array.from(context.getImageData(0, 0, canvas.width, canvas.height).data);
}"""

READ_CANVAS = """(selector) => {
  const canvas = document.querySelector(selector);
  return Array.from(canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data);
}"""


def rgb(flat, height, width):
  return np.array(flat, np.uint8).reshape(height, width, 4)[..., :3]


@pytest.fixture(scope="module")
def url(tmp_path_factory, worker_id):
  model = os.environ.get("CCNET_JAX_EXPLORER_MODEL") or shared_stripe_reader(
      tmp_path_factory, worker_id
  )
  with serving(make_app(Explorer(ExploredModel(model)))) as base:
    yield base


@pytest.fixture(scope="module")
def page(url):
  if not os.path.exists(CHROMIUM):
    pytest.fail(f"{CHROMIUM} is missing: apt-get install -y chromium (.ci/run does).")
  with tempfile.TemporaryDirectory() as profile, sync_playwright() as playwright:
    context = playwright.chromium.launch_persistent_context(
        profile,
        executable_path=CHROMIUM,
        args=CHROMIUM_ARGS,
        viewport={"width": 1100, "height": 760},
        device_scale_factor=1,
    )
    page = context.new_page()
    page.requested = []
    page.on("request", lambda request: page.requested.append(request.url))
    page.errors = []
    page.on("pageerror", lambda error: page.errors.append(str(error)))
    page.goto(url)
    page.wait_for_function("window.explorer.meta !== null")
    yield page
    context.close()


def inner_pixel(mask):
  """The middle one of the pixels of ``mask`` with the most of ``mask`` in the 7x7 square
  around them."""
  padded = np.pad(mask, 3).astype(int)
  counts = sum(
      padded[dy : dy + mask.shape[0], dx : dx + mask.shape[1]] for dy in range(7) for dx in range(7)
  )
  counts = np.where(mask, counts, -1)
  inner = np.argwhere(counts == counts.max())
  return tuple(int(p) for p in inner[len(inner) // 2])


def api_attention(url, y, x):
  with urllib.request.urlopen(url + f"demo/{SCENE}") as response:
    scene = response.read()
  request = urllib.request.Request(url + f"attention?y={y}&x={x}", data=scene, method="POST")
  with urllib.request.urlopen(request) as response:
    return json.loads(response.read())


def test_a_clicked_shape_pixel_shows_weight_on_the_stripe_of_its_column(page, url, tmp_path):
  scene = demo_scene(SCENE)
  height, width = scene["label"].shape
  page.click(f"#demos button >> nth={SCENE}")
  page.wait_for_function("window.explorer.labels !== null")

  # The prediction panel is the API's labels in the classes' colours.
  with urllib.request.urlopen(url + f"demo/{SCENE}") as response:
    request = urllib.request.Request(url + "predict", data=response.read(), method="POST")
  with urllib.request.urlopen(request) as response:
    labels = np.asarray(Image.open(io.BytesIO(response.read())))
  shown = rgb(page.evaluate(READ_CANVAS, "#prediction"), height, width)
  np.testing.assert_array_equal(shown, SYNTHETIC.palette[labels])

  y, x = inner_pixel(np.isin(scene["label"], SHAPES))
  box = page.locator("#stack-loop1").bounding_box()
  page.mouse.click(
      box["x"] + (x + 0.5) * box["width"] / width, box["y"] + (y + 0.5) * box["height"] / height
  )
  page.wait_for_function(
      f"window.explorer.attention && window.explorer.attention.pixel.join() === '{y},{x}'"
  )
  answer = page.evaluate("window.explorer.attention")
  assert answer == api_attention(url, y, x)

  loop1 = np.array(answer["loop1"])
  grid_y, grid_x = grid_position((y, x), (height, width), loop1.shape)
  assert answer["grid_pixel"] == [grid_y, grid_x]
  on_stripe = loop1[stripe_rows(height, loop1.shape[0]), grid_x].sum()
  assert on_stripe > 0.5, f"{on_stripe:.3f} of the loop-1 weight on the stripe of column {x}"

  # The panels draw the answer's numbers: the CLI figure's heat colours, and the probabilities.
  for name in ("loop1", "effective"):
    drawn = rgb(page.evaluate(READ_IMAGE, f"#heat-{name}"), height, width)
    np.testing.assert_array_equal(drawn, heat(upsample(np.array(answer[name]), (height, width))))
  probabilities = np.array(answer["probabilities"])
  first_row = page.locator("#probabilities tr").first
  assert first_row.get_attribute("data-class-id") == str(int(probabilities.argmax()))
  assert first_row.locator(".value").inner_text() == f"{probabilities.max():.3f}"
  assert page.inner_text("#pixel-title").startswith(f"Pixel ({y}, {x}): ")

  path = os.environ.get("CCNET_JAX_EXPLORER_SCREENSHOT") or str(tmp_path / "explorer.png")
  page.screenshot(path=path, full_page=True)
  assert Image.open(path).size[0] >= 1100
  assert page.errors == []
  assert all(address.startswith((url, "data:", "blob:")) for address in page.requested)


DROP = """(bytes) => {
  const file = new File([new Uint8Array(bytes)], "dropped.png", { type: "image/png" });
  const data = new DataTransfer();
  data.items.add(file);
  document.body.dispatchEvent(
      new DragEvent("drop", { dataTransfer: data, bubbles: true, cancelable: true }));
}"""


def test_chosen_and_dropped_files_are_predicted_and_a_bad_one_explained(page, tmp_path):
  Image.fromarray(demo_scene(4)["image"]).save(tmp_path / "scene.png")
  page.set_input_files("#file", str(tmp_path / "scene.png"))
  page.wait_for_function("window.explorer.name === 'scene.png' && window.explorer.labels")
  assert page.inner_text("#message") == ("scene.png (256x64): click a pixel to see where it looks.")
  page.evaluate(DROP, list((tmp_path / "scene.png").read_bytes()))
  page.wait_for_function("window.explorer.name === 'dropped.png' && window.explorer.labels")
  (tmp_path / "notes.txt").write_text("not an image")
  page.set_input_files("#file", str(tmp_path / "notes.txt"))
  page.wait_for_selector("#message.error")
  assert page.inner_text("#message") == (
      "notes.txt: the request body is not an image file (PNG, JPEG, BMP, TIFF, WebP, ...)."
  )
  assert page.evaluate("window.explorer.labels") is None
