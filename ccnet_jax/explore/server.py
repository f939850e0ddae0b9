"""The explorer's web app: a vanilla page and an HTTP API, served by Starlette on uvicorn.

Routes (JSON errors are ``{"error": "..."}`` with a 4xx status; the server keeps running):

* ``GET /``: the page (``static/``; no asset comes from the internet);
* ``GET /model``: the model's classes, colours, loops and inference settings, the demo scenes
  and the images of ``--images``;
* ``POST /predict?format=png|json&mode=whole|sliding``: body = an image file; out: a PNG of
  class ids (8-bit grey, value = class) or JSON ``{"labels": [[...]], "model": {...}}``;
* ``POST /attention?y=ROW&x=COLUMN&mode=...``: body = an image file; out: JSON with the pixel's
  class probabilities, its loop-1 and effective weights on the output grid, and both as heat
  images (PNG data URLs) at the image size;
* ``GET /demo/N``, ``GET /images/NAME``: a generated demo scene, an image of ``--images``;
* ``GET /heat-scale.png``: the colour scale of the heat images.

The network runs in a worker thread, so one long analysis never blocks the page or other
requests; each answer is computed from its own request's bytes only.
"""

from __future__ import annotations

import contextlib
import functools
import os
import socket
import sys
import threading
import traceback
from typing import Iterator

import uvicorn
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from ccnet_jax import interrupts
from ccnet_jax.explore.backend import IMAGE_EXTENSIONS, demo_scenes, heat_scale
from ccnet_jax.explore.session import Explorer, RequestError, encode_png, too_large

STATIC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")
DEMO_SCENES_SHOWN = 8
FORMATS = ("png", "json")


def folder_images(folder: str | None) -> dict[str, str]:
  """{name relative to ``folder``: path} of the image files under it, sorted by name."""
  if not folder:
    return {}
  found = {}
  for root, dirs, files in os.walk(folder):
    dirs.sort()
    for name in sorted(files):
      if os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS:
        path = os.path.join(root, name)
        found[os.path.relpath(path, folder).replace(os.sep, "/")] = path
  return found


def _error(status: int, message: str) -> JSONResponse:
  return JSONResponse({"error": message}, status_code=status)


def _answers(endpoint):
  """Turns a RequestError into its status and message, and any other failure into a 500 with
  one line (the traceback goes to the server's stderr), so no request stops the server."""

  @functools.wraps(endpoint)
  async def wrapped(request: Request) -> Response:
    try:
      return await endpoint(request)
    except RequestError as error:
      return _error(error.status, error.message)
    except Exception as error:  # pylint: disable=broad-except
      traceback.print_exc(file=sys.stderr)
      return _error(500, f"internal error: {type(error).__name__}: {error}")

  return wrapped


async def _body(request: Request, max_bytes: int) -> bytes:
  """The request body, at most ``max_bytes``; a larger one is read to its end and refused."""
  chunks, size = [], 0
  async for chunk in request.stream():
    size += len(chunk)
    if size <= max_bytes:
      chunks.append(chunk)
  if size > max_bytes:
    raise RequestError(413, too_large(size, max_bytes))
  return b"".join(chunks)


def make_app(explorer: Explorer, images_folder: str | None = None) -> Starlette:
  """The page and the API for ``explorer``; ``images_folder`` is offered in the page."""

  async def page(request: Request) -> Response:
    return FileResponse(os.path.join(STATIC, "index.html"))

  @_answers
  async def model(request: Request) -> Response:
    return JSONResponse(
        {
            **explorer.model.metadata(),
            "demo_scenes": DEMO_SCENES_SHOWN,
            "images": list(folder_images(images_folder)),
            "max_upload_bytes": explorer.limits.max_bytes,
        }
    )

  @_answers
  async def predict(request: Request) -> Response:
    data = await _body(request, explorer.limits.max_bytes)
    output = request.query_params.get("format", "png")
    mode = request.query_params.get("mode")
    if output not in FORMATS:
      raise RequestError(400, f"format={output!r} is not one of {', '.join(FORMATS)}.")
    if output == "json":
      return JSONResponse(await run_in_threadpool(explorer.predict_json, data, mode))
    labels = await run_in_threadpool(explorer.predict, data, mode)
    return Response(encode_png(labels), media_type="image/png")

  @_answers
  async def attention(request: Request) -> Response:
    data = await _body(request, explorer.limits.max_bytes)
    query = request.query_params
    answer = await run_in_threadpool(
        explorer.attention, data, query.get("y"), query.get("x"), query.get("mode")
    )
    return JSONResponse(answer)

  @_answers
  async def demo(request: Request) -> Response:
    index = request.path_params["index"]
    scenes = demo_scenes()
    if not 0 <= index < len(scenes):
      raise RequestError(404, f"demo scene {index} does not exist (0..{len(scenes) - 1}).")
    return Response(encode_png(scenes[index]["image"]), media_type="image/png")

  @_answers
  async def folder_image(request: Request) -> Response:
    path = folder_images(images_folder).get(request.path_params["name"])
    if path is None:
      raise RequestError(404, f"{request.path_params['name']!r} is not an image of --images.")
    return FileResponse(path)

  async def scale(request: Request) -> Response:
    return Response(encode_png(heat_scale()), media_type="image/png")

  async def http_error(request: Request, error: HTTPException) -> Response:
    return _error(error.status_code, f"{request.method} {request.url.path}: {error.detail}")

  return Starlette(
      routes=[
          Route("/", page),
          Route("/model", model),
          Route("/predict", predict, methods=["POST"]),
          Route("/attention", attention, methods=["POST"]),
          Route("/demo/{index:int}", demo),
          Route("/images/{name:path}", folder_image),
          Route("/heat-scale.png", scale),
          Mount("/static", app=StaticFiles(directory=STATIC), name="static"),
      ],
      exception_handlers={HTTPException: http_error},
  )


def listen(host: str, port: int) -> socket.socket:
  """A socket bound to ``host:port`` (0: any free port); ValueError naming the flag if not."""
  try:
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(address)
  except OSError as error:
    raise ValueError(
        f"--host={host} --port={port}: cannot listen there ({error.strerror or error});"
        " choose another --port (0 picks a free one) or --host."
    ) from None
  sock.listen(128)
  return sock


def url_of(sock: socket.socket) -> str:
  host, port = sock.getsockname()[:2]
  return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


def _server(app: Starlette) -> uvicorn.Server:
  return uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))


def serve(app: Starlette, sock: socket.socket) -> None:
  """Serves in this thread until Ctrl-C or SIGTERM: the requests in flight are answered, then
  it returns (the command's normal end)."""
  with interrupts.as_keyboard_interrupt():
    try:
      _server(app).run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn stops gracefully, then raises the signal it caught again.
      pass


@contextlib.contextmanager
def serving(app: Starlette, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
  """Serves ``app`` from a background thread while the block runs; yields its base URL."""
  sock = listen(host, port)
  server = _server(app)
  thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
  thread.start()
  try:
    while not server.started:
      if not thread.is_alive():
        raise RuntimeError("the explorer's server thread stopped before it started.")
      threading.Event().wait(0.01)
    yield url_of(sock)
  finally:
    server.should_exit = True
    thread.join()
    sock.close()
