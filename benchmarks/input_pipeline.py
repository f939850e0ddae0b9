"""How fast the host feeds training: the real train loader against the official cv2 pipeline.

On generated Cityscapes-sized data (1024x2048 photo-like PNGs and labelIds PNGs written to a
temporary folder in the Cityscapes layout), or on a real dataset folder with ``--root``, it
reports

* images/s and CPU-seconds per image of ``make_train_loader`` for the config (the recipe's
  scale, crop and flip) with ``data.num_workers`` = each of ``--workers``: the wall rate, and
  the CPU time of the process and its grain workers, which a busy machine does not distort;
  once reading the dataset's PNGs, once reading the split stored decoded in an ArrayRecord file
  (written first by ``python -m ccnet_jax.data``'s ``convert_splits``; ``data.decoded_dir``);
* the same for the official code's pipeline (speedinghzl/CCNet ``dataset/datasets.py``,
  ``CSDataSet.__getitem__``), re-implemented here with OpenCV in one process and one thread:
  cv2.imread, the id -> train id dict loop, cv2.resize of the whole image, float32 mean
  subtraction, cv2.copyMakeBorder, crop, CHW transpose, flip; once as published and once
  without the id loop (as if the labels were train ids already);
* the time of each stage of one example in this process (read, decode, label map,
  resample, pad and flip, batch, normalise, transfer), the decoders compared, and the read of
  a decoded example from the ArrayRecord file that replaces reading and decoding.

  python benchmarks/input_pipeline.py                        # 24 generated images, workers 0,1,2
  python benchmarks/input_pipeline.py --rounds 3             # every row 3 times, in turn
  python benchmarks/input_pipeline.py --root /data/cityscapes --workers 0,4,8,16
  python benchmarks/input_pipeline.py --images 4 --image-size 64,128 --crop 32 --batch 1 \
      --warmup 1 --measure 4

Every rate is a mean over ``--measure`` images after ``--warmup`` images, in batches of
``--batch`` (the recipe's 8: grain hands each batch across processes once, ~5 ms of the main
process's CPU); the load average of the machine is printed with the figures. ``--json FILE``
writes the rows.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import statistics
import sys
import tempfile
import time
from typing import Callable

import cv2
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from ccnet_jax.data.labels import IGNORE_LABEL  # noqa: E402  pylint: disable=wrong-import-position

# The official CSDataSet.id_to_trainid, as a dict loop over the label (ids 0..33, -1 unused).
_OFFICIAL_ID_TO_TRAINID = {
    -1: 255, 0: 255, 1: 255, 2: 255, 3: 255, 4: 255, 5: 255, 6: 255, 7: 0, 8: 1, 9: 255,
    10: 255, 11: 2, 12: 3, 13: 4, 14: 255, 15: 255, 16: 255, 17: 5, 18: 255, 19: 6, 20: 7,
    21: 8, 22: 9, 23: 10, 24: 11, 25: 12, 26: 13, 27: 14, 28: 15, 29: 255, 30: 255, 31: 16,
    32: 17, 33: 18,
}  # fmt: skip


def _cpu_seconds(pid: int) -> float:
  """User + system CPU time of a process, all its threads (Linux /proc)."""
  with open(f"/proc/{pid}/stat", encoding="ascii") as f:
    fields = f.read().rsplit(")", 1)[1].split()
  return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _descendants(pid: int) -> list[int]:
  parents = {}
  for name in os.listdir("/proc"):
    if name.isdigit():
      try:
        with open(f"/proc/{name}/stat", encoding="ascii") as f:
          parents[int(name)] = int(f.read().rsplit(")", 1)[1].split()[1])
      except OSError:
        continue
  found, frontier = [], [pid]
  while frontier:
    children = [child for child, parent in parents.items() if parent in frontier]
    found += children
    frontier = children
  return found


def _tree_cpu_seconds() -> float:
  """CPU time of this process and every process it started (grain workers)."""
  total = 0.0
  for pid in [os.getpid()] + _descendants(os.getpid()):
    try:
      total += _cpu_seconds(pid)
    except OSError:
      continue
  return total


def _load() -> str:
  return " ".join(f"{x:.1f}" for x in os.getloadavg())


# ---------------------------------------------------------------------------------------------
# Generated data


def _scene(rng: np.random.Generator, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
  """A photo-like RGB image (smooth shading, flat polygons, sensor noise) and its labelIds."""
  low = rng.uniform(0, 255, (height // 128 + 2, width // 128 + 2, 3)).astype(np.float32)
  image = cv2.resize(low, (width, height), interpolation=cv2.INTER_CUBIC)
  label = np.full((height, width), 7, np.uint8)  # road
  for _ in range(60):
    corners = rng.uniform(0, 1, (int(rng.integers(3, 9)), 2)) * (width, height)
    polygon = [corners.astype(np.int32)]
    cv2.fillPoly(label, polygon, int(rng.integers(0, 34)))
    cv2.fillPoly(image, polygon, rng.uniform(0, 255, 3).tolist())
  image += rng.normal(0, 2.0, image.shape).astype(np.float32)
  return np.clip(image, 0, 255).astype(np.uint8), label


def write_cityscapes_tree(root: str, count: int, size: tuple[int, int], seed: int = 0) -> dict:
  """``count`` training pairs in the Cityscapes layout under ``root``; returns file sizes."""
  rng = np.random.default_rng(seed)
  image_dir = os.path.join(root, "leftImg8bit", "train", "bench")
  label_dir = os.path.join(root, "gtFine", "train", "bench")
  os.makedirs(image_dir, exist_ok=True)
  os.makedirs(label_dir, exist_ok=True)
  image_bytes, label_bytes = [], []
  for n in range(count):
    image, label = _scene(rng, *size)
    stem = f"bench_{n:06d}_000019"
    image_path = os.path.join(image_dir, f"{stem}_leftImg8bit.png")
    label_path = os.path.join(label_dir, f"{stem}_gtFine_labelIds.png")
    # zlib level 6, the default of libpng and PIL.
    cv2.imwrite(image_path, image[..., ::-1], [cv2.IMWRITE_PNG_COMPRESSION, 6])
    cv2.imwrite(label_path, label, [cv2.IMWRITE_PNG_COMPRESSION, 6])
    image_bytes.append(os.path.getsize(image_path))
    label_bytes.append(os.path.getsize(label_path))
  return {
      "image_mb": statistics.mean(image_bytes) / 1e6,
      "label_kb": statistics.mean(label_bytes) / 1e3,
  }


# ---------------------------------------------------------------------------------------------
# The official pipeline


class OfficialPipeline:
  """speedinghzl/CCNet CSDataSet.__getitem__ with this config's crop, scales and mean."""

  def __init__(self, image_paths, label_paths, data_config, map_ids: bool = True):
    self.files = list(zip(image_paths, label_paths))
    self.crop_h, self.crop_w = data_config.crop_size
    self.mean = np.asarray(data_config.mean, np.float32)  # BGR, as the config gives it
    self.ignore_label = IGNORE_LABEL
    self.scales = (data_config.scale_min, data_config.scale_max, data_config.scale_step)
    self.map_ids = map_ids

  def id2train_id(self, label):
    label_copy = label.copy()
    for k, v in _OFFICIAL_ID_TO_TRAINID.items():
      label_copy[label == k] = v
    return label_copy

  def generate_scale_label(self, image, label):
    low, high, step = self.scales
    f_scale = low + random.randint(0, int(round((high - low) / step))) * step
    image = cv2.resize(image, None, fx=f_scale, fy=f_scale, interpolation=cv2.INTER_LINEAR)
    label = cv2.resize(label, None, fx=f_scale, fy=f_scale, interpolation=cv2.INTER_NEAREST)
    return image, label

  def __getitem__(self, index):
    image_path, label_path = self.files[index % len(self.files)]
    image = cv2.imread(image_path, cv2.IMREAD_COLOR)
    label = cv2.imread(label_path, cv2.IMREAD_GRAYSCALE)
    if self.map_ids:
      label = self.id2train_id(label)
    image, label = self.generate_scale_label(image, label)
    image = np.asarray(image, np.float32)
    image -= self.mean
    img_h, img_w = label.shape
    pad_h, pad_w = max(self.crop_h - img_h, 0), max(self.crop_w - img_w, 0)
    if pad_h > 0 or pad_w > 0:
      img_pad = cv2.copyMakeBorder(
          image, 0, pad_h, 0, pad_w, cv2.BORDER_CONSTANT, value=(0.0, 0.0, 0.0)
      )
      label_pad = cv2.copyMakeBorder(
          label, 0, pad_h, 0, pad_w, cv2.BORDER_CONSTANT, value=(self.ignore_label,)
      )
    else:
      img_pad, label_pad = image, label
    img_h, img_w = label_pad.shape
    h_off = random.randint(0, img_h - self.crop_h)
    w_off = random.randint(0, img_w - self.crop_w)
    window = np.s_[h_off : h_off + self.crop_h, w_off : w_off + self.crop_w]
    image = np.asarray(img_pad[window], np.float32)
    label = np.asarray(label_pad[window], np.float32)
    image = image.transpose((2, 0, 1))
    flip = np.random.choice(2) * 2 - 1
    image = image[:, :, ::flip]
    label = label[:, ::flip]
    return image.copy(), label.copy()


# ---------------------------------------------------------------------------------------------
# Measurements


def measure(next_image: Callable[[], object], warmup: int, count: int, per_call: int = 1) -> dict:
  """Wall images/s and CPU-seconds per image (this process and its workers) over ``count``."""
  for _ in range(-(-warmup // per_call)):
    next_image()
  calls = -(-count // per_call)
  wall, cpu = time.perf_counter(), _tree_cpu_seconds()
  for _ in range(calls):
    next_image()
  wall, cpu = time.perf_counter() - wall, _tree_cpu_seconds() - cpu
  images = calls * per_call
  return {"images_per_s": images / wall, "cpu_s_per_image": cpu / images, "load": _load()}


def loader_row(data_config, workers: int, batch: int, warmup: int, count: int, seed: int) -> dict:
  from ccnet_jax.data.pipeline import make_train_loader

  config = data_config.copy_and_resolve_references()
  config.num_workers = workers
  loader = make_train_loader(
      config, global_batch_size=batch, seed=seed, process_index=0, process_count=1
  )
  row = measure(lambda: next(loader), warmup, count, per_call=batch)
  reads = "ArrayRecord (data.decoded_dir)" if config.decoded_dir else "PNG"
  return {
      "pipeline": f"ccnet-jax loader, {reads}, data.num_workers={workers}",
      "workers": workers,
      **row,
  }


def official_row(source, data_config, warmup: int, count: int, map_ids: bool) -> dict:
  official = OfficialPipeline(source.image_paths, source.label_paths, data_config, map_ids)
  random.seed(0)
  np.random.seed(0)
  counter = iter(range(10**9))
  row = measure(lambda: official[next(counter)], warmup, count)
  what = "id -> train id dict loop" if map_ids else "without the id loop"
  return {"pipeline": f"official cv2 pipeline ({what}), one process", "workers": 0, **row}


def stage_rows(source, stored, data_config, batch: int, repeats: int) -> list[dict]:
  """CPU milliseconds of each stage of one example, in this process, median of ``repeats``."""
  import jax
  import pyspng
  from PIL import Image

  from ccnet_jax.data import folders, labels, transforms
  from ccnet_jax.models.preprocessing import Preprocessing
  from ccnet_jax.training.step import normalize_images

  image_path, label_path = source.image_paths[0], source.label_paths[0]
  with open(image_path, "rb") as f:
    image_data = f.read()
  with open(label_path, "rb") as f:
    label_data = f.read()

  def read():
    for path in (image_path, label_path):
      with open(path, "rb") as f:
        f.read()

  def pil_rgb():
    with Image.open(io.BytesIO(image_data)) as image:
      return np.asarray(image.convert("RGB"))

  def pil_label():
    with Image.open(io.BytesIO(label_data)) as image:
      return np.asarray(image)

  def cv2_decode(data, flags):
    return cv2.imdecode(np.frombuffer(data, np.uint8), flags)

  image = folders.read_image(image_path)
  raw_label = folders.read_label(label_path)
  is_ids = label_path.endswith("_labelIds.png")
  table = labels.CITYSCAPES_ID_TO_TRAIN_ID if is_ids else np.arange(256, dtype=np.uint8)
  num_ids = labels.CITYSCAPES_NUM_LABEL_IDS if is_ids else 256
  label = folders.map_label(raw_label, table, num_ids, label_path)
  crop_h, crop_w = data_config.crop_size
  # The recipe's mean case: scale 1.1 (of 0.5 .. 1.6), a crop in the middle.
  size = transforms.scaled_size_half_even(image.shape, 1.1)
  window = ((size[0] - crop_h) // 2, (size[1] - crop_w) // 2, crop_h, crop_w)
  crop = transforms.resize_bilinear(image, size, window)
  crop_label = transforms.resize_nearest(label, size, window)
  example = {"image": crop, "label": crop_label, "image_box": np.array([0, 0, crop_h, crop_w])}
  stacked = {k: np.stack([v] * batch) for k, v in example.items()}
  preprocessing = Preprocessing.from_config(data_config)
  normalize = jax.jit(lambda images, boxes: normalize_images(images, boxes, preprocessing))
  normalize(stacked["image"], stacked["image_box"]).block_until_ready()
  device = jax.devices()[0]
  floats = {
      "image": preprocessing.normalize(stacked["image"]),
      "label": stacked["label"].astype(np.int32),
  }

  def transfer(arrays):
    return lambda: jax.block_until_ready(jax.device_put(arrays, device))

  per_batch = 1.0 / batch
  rgb, grey = cv2.IMREAD_COLOR_RGB | cv2.IMREAD_IGNORE_ORIENTATION, cv2.IMREAD_GRAYSCALE
  stages = [
      ("read (image + label files)", read, 1.0, "used"),
      (
          "read + decode replaced: decoded image + label from ArrayRecord",
          lambda: stored[0],
          1.0,
          "decoded_dir",
      ),
      ("decode image: libspng", lambda: pyspng.load(image_data, "RGB"), 1.0, "used"),
      ("decode image: OpenCV (libpng)", lambda: cv2_decode(image_data, rgb), 1.0, ""),
      ("decode image: PIL", pil_rgb, 1.0, "before"),
      ("decode label: libspng", lambda: pyspng.load(label_data, "L"), 1.0, ""),
      ("decode label: OpenCV (libpng)", lambda: cv2_decode(label_data, grey), 1.0, "used"),
      ("decode label: PIL", pil_label, 1.0, "before"),
      (
          "label map: one table lookup + id check",
          lambda: folders.map_label(raw_label, table, num_ids, label_path),
          1.0,
          "used",
      ),
      (
          "resample: window of the image (OpenCV) + label (nearest)",
          lambda: (
              transforms.resize_bilinear(image, size, window),
              transforms.resize_nearest(label, size, window),
          ),
          1.0,
          "used",
      ),
      (
          "flip (cv2.flip of image and label)",
          lambda: (cv2.flip(crop, 1), cv2.flip(crop_label, 1)),
          1.0,
          "used",
      ),
      (
          f"batch (np.stack of {batch}), per image",
          lambda: {k: np.stack([v] * batch) for k, v in example.items()},
          per_batch,
          "used",
      ),
      (
          "normalise on the host (numpy float32), per image: no longer done",
          lambda: preprocessing.normalize(stacked["image"]),
          per_batch,
          "before",
      ),
      (
          "normalise in the step (XLA on this CPU), per image",
          lambda: normalize(stacked["image"], stacked["image_box"]).block_until_ready(),
          per_batch,
          "used",
      ),
      (
          f"transfer to {device.platform}: uint8 image + label, per image",
          transfer({k: stacked[k] for k in ("image", "label", "image_box")}),
          per_batch,
          "used",
      ),
      (
          f"transfer to {device.platform}: float32 image + int32 label, per image",
          transfer(floats),
          per_batch,
          "before",
      ),
  ]
  # Round robin, so that every stage (and every decoder) sees the same load.
  times = [[] for _ in stages]
  for _ in range(repeats):
    for (_, fn, _, _), samples in zip(stages, times):
      start = time.process_time()
      fn()
      samples.append(time.process_time() - start)
  return [
      {"stage": name, "cpu_ms": 1e3 * statistics.median(samples) * scale, "role": role}
      for (name, _, scale, role), samples in zip(stages, times)
  ]


# ---------------------------------------------------------------------------------------------


def _print_tables(rows: list[dict], stages: list[dict], info: dict) -> None:
  print(
      f"\n{info['count']} images {info['source']}, crop {info['crop']}, scales "
      f"{info['scales']}, {os.cpu_count()} CPUs; load average at start {info['load_start']},"
      f" at end {_load()}\n"
  )
  print("| pipeline | img/s | CPU-s / image | img / CPU-s | load avg (1, 5, 15 min) |")
  print("|---|---:|---:|---:|---|")
  for row in rows:
    cpu = row["cpu_s_per_image"]  # 0 when below the clock tick (tiny images)
    print(
        f"| {row['pipeline']} | {row['images_per_s']:.1f} | {cpu:.4f} |"
        f" {f'{1 / cpu:.1f}' if cpu else '-'} | {row['load']} |"
    )
  if stages:
    print("\n| stage of one example (this process) | CPU ms | |")
    print("|---|---:|---|")
    for stage in stages:
      print(f"| {stage['stage']} | {stage['cpu_ms']:.2f} | {stage['role']} |")


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--config", default=os.path.join(ROOT, "configs", "cityscapes.py"))
  parser.add_argument("--root", default="", help="a dataset folder; default: generated data")
  parser.add_argument("--images", type=int, default=24, help="generated training pairs")
  parser.add_argument("--image-size", default="1024,2048", help="generated image size h,w")
  parser.add_argument("--crop", type=int, default=0, help="crop side; default: the config's")
  parser.add_argument("--workers", default="0,1,2", help="data.num_workers values to measure")
  parser.add_argument("--batch", type=int, default=8, help="global batch size of the loader")
  parser.add_argument("--warmup", type=int, default=16, help="images before timing")
  parser.add_argument("--measure", type=int, default=48, help="images timed per row")
  parser.add_argument("--rounds", type=int, default=1, help="times every row is measured")
  parser.add_argument("--stage-repeats", type=int, default=9)
  parser.add_argument("--skip", default="", help="comma list of: loader, decoded, official, stages")
  parser.add_argument("--json", default="", help="write the rows to this file")
  args = parser.parse_args(argv)

  import importlib.util

  from ccnet_jax.data.__main__ import convert_splits
  from ccnet_jax.data.sources import build_source

  spec = importlib.util.spec_from_file_location("bench_config", args.config)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  data_config = module.get_config().data
  if args.crop:
    data_config.crop_size = (args.crop, args.crop)
  cv2.setNumThreads(1)
  skip = set(filter(None, args.skip.split(",")))
  load_start = _load()
  with tempfile.TemporaryDirectory() as temp:
    if args.root:
      data_config.root = args.root
      described = f"from {args.root}"
    else:
      size = tuple(int(n) for n in args.image_size.split(","))
      files = write_cityscapes_tree(temp, args.images, size)
      data_config.root = temp
      described = (
          f"generated ({size[0]}x{size[1]} PNG, {files['image_mb']:.2f} MB; labelIds PNG, "
          f"{files['label_kb']:.0f} kB)"
      )
    source = build_source(data_config, data_config.train_split)
    stored_config = data_config.copy_and_resolve_references()
    stored_config.decoded_dir = os.path.join(temp, "decoded")
    if not {"decoded", "stages"} <= skip:
      convert_splits(data_config, [data_config.train_split], stored_config.decoded_dir)
    rows = []
    for _ in range(args.rounds):  # every row once per round, in turn, under the same load
      if "official" not in skip:
        for map_ids in (True, False):
          rows.append(official_row(source, data_config, args.warmup, args.measure, map_ids))
      for workers in (int(n) for n in args.workers.split(",")):
        for name, config in (("loader", data_config), ("decoded", stored_config)):
          if name not in skip:
            rows.append(loader_row(config, workers, args.batch, args.warmup, args.measure, seed=0))
    stages = []
    if "stages" not in skip:
      stored = build_source(stored_config, data_config.train_split)
      stages = stage_rows(source, stored, data_config, 8, args.stage_repeats)
  info = {
      "count": len(source),
      "source": described,
      "crop": tuple(data_config.crop_size),
      "scales": (data_config.scale_min, data_config.scale_max, data_config.scale_step),
      "load_start": load_start,
  }
  _print_tables(rows, stages, info)
  if args.json:
    with open(args.json, "w", encoding="utf-8") as f:
      json.dump({"info": info, "rows": rows, "stages": stages}, f, indent=1)


if __name__ == "__main__":
  main()
