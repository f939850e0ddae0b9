"""The input benchmark runs end to end on tiny generated data and reports what it claims."""

import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))
import input_pipeline  # noqa: E402

from ccnet_jax.data.config import data_config  # noqa: E402
from ccnet_jax.data.folders import CityscapesFolders  # noqa: E402


def test_rows_for_the_loaders_the_official_pipeline_and_the_stages(tmp_path):
  out = tmp_path / "rows.json"
  tiny = "--images 3 --image-size 48,96 --crop 32 --workers 0 --batch 1 --warmup 1 --measure 2"
  input_pipeline.main(tiny.split() + ["--stage-repeats", "1", "--json", str(out)])
  result = json.loads(out.read_text())
  pipelines = [row["pipeline"] for row in result["rows"]]
  assert len(pipelines) == 4 and all("data.num_workers=0" in row for row in pipelines[2:])
  assert "PNG" in pipelines[2] and "ArrayRecord" in pipelines[3]
  assert all(row["images_per_s"] > 0 and row["cpu_s_per_image"] >= 0 for row in result["rows"])
  stages = {row["stage"].split(":")[0] for row in result["stages"]}
  assert {"read (image + label files)", "decode image", "label map", "transfer to cpu"} <= stages
  assert "read + decode replaced" in stages


def test_rounds_measure_every_row_again_in_the_same_order(tmp_path):
  out = tmp_path / "rows.json"
  tiny = "--images 3 --image-size 48,96 --crop 32 --workers 0 --batch 1 --warmup 1 --measure 2"
  input_pipeline.main(tiny.split() + ["--rounds", "2", "--skip", "stages", "--json", str(out)])
  pipelines = [row["pipeline"] for row in json.loads(out.read_text())["rows"]]
  assert len(pipelines) == 8 and pipelines[:4] == pipelines[4:]


def test_official_pipeline_gives_the_recipes_crops(tmp_path):
  """Mean-subtracted BGR crops in CHW and train-id labels, as the official loader returns."""
  input_pipeline.write_cityscapes_tree(str(tmp_path), 2, (48, 96))
  source = CityscapesFolders(str(tmp_path), "train")
  config = data_config("cityscapes")
  config.crop_size = (32, 40)
  official = input_pipeline.OfficialPipeline(source.image_paths, source.label_paths, config)
  for index in range(4):
    image, label = official[index]
    assert image.shape == (3, 32, 40) and label.shape == (32, 40)
    train_ids = set(np.unique(source[index % 2]["label"]).tolist()) | {255}
    assert set(np.unique(label).astype(int).tolist()) <= train_ids
    assert image.min() >= -config.mean[2] - 1e-3 and image.max() <= 255 - config.mean[0] + 1e-3
