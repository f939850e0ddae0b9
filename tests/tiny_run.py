"""The tiny training run that the fault and preemption tests start as a user would.

train.py flags of a 4-step synthetic run, the config object they make, the environment of its
subprocesses (one CPU device, a shared compilation cache) and what a finished run left on disk.
"""

from __future__ import annotations

import json
import os

import pytest

from configs import synthetic
from tests.processes import ROOT

CONFIG = os.path.join(ROOT, "configs", "synthetic.py")
TOTAL_STEPS = 4
TINY = {
    "data.synthetic.num_train": 8,
    "data.synthetic.num_eval": 2,
    "data.synthetic.image_size": (33, 33),
    "data.crop_size": (33, 33),
    "eval.mode": "whole",
    "eval.num_images_to_save": 1,
    "train.num_summary_images": 1,
    "train.global_batch_size": 2,
    "train.total_steps": TOTAL_STEPS,
    "train.log_every": 1,
    "train.eval_every": 0,
    "train.checkpoint_every": 2,
}


def _flag(name, value):
  text = ",".join(map(str, value)) if isinstance(value, tuple) else value
  return f"--config.{name}={text}"


def flags(**overrides):
  """train.py/eval.py flags of the tiny run; ``train__eval_every=2`` sets train.eval_every."""
  values = dict(TINY, **{name.replace("__", "."): v for name, v in overrides.items()})
  return [f"--config={CONFIG}"] + [_flag(name, value) for name, value in values.items()]


def tiny_config():
  """The config object of ``flags()``, for restoring the checkpoints it writes in-process."""
  config = synthetic.get_config()
  for name, value in TINY.items():
    section, _, field = name.rpartition(".")
    node = config
    for part in section.split("."):
      node = node[part]
    node[field] = value
  return config


@pytest.fixture(scope="module")
def environment(tmp_path_factory):
  """One device (no forced host devices) and a compilation cache shared by all runs."""
  env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "CCNET_JAX_TRACEBACK")}
  env.update(
      PYTHONPATH=ROOT,
      JAX_PLATFORMS="cpu",
      JAX_COMPILATION_CACHE_DIR=str(tmp_path_factory.mktemp("jax_cache")),
      JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
      JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
  )
  return env


def saved_steps(workdir):
  directory = os.path.join(workdir, "checkpoints")
  return sorted(int(name) for name in os.listdir(directory) if name.isdigit())


def logged_losses(workdir):
  """{step: loss} from metrics.jsonl; fails if a step is logged twice."""
  with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
    steps = [json.loads(line) for line in f]
  train = [record for record in steps if "train/loss" in record]
  assert len({r["step"] for r in train}) == len(train), train
  return {r["step"]: r["train/loss"] for r in train}
