"""train.py and eval.py as a user runs them: evaluation during training, best/, pruning, help.

Everything goes through the scripts (subprocesses) and the files they write, not through the
trainer's internals. One tiny training run (8 steps, evaluated every 2) is shared.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.helpers import ROOT
from tests.processes import HANG_TIMEOUT

TOTAL_STEPS, EVAL_EVERY, KEEP = 8, 2, 2

# The tiny run on 48x32 images. A high learning rate makes the model, and so its mIoU,
# change from one evaluation to the next.
TINY_CONFIG = f"""
from tests.helpers import tiny_run_config


def get_config():
  config = tiny_run_config(total_steps={TOTAL_STEPS}, global_batch_size=4,
                           eval_every={EVAL_EVERY}, checkpoint_every=1, keep_checkpoints={KEEP})
  config.data.synthetic.image_size = (48, 32)
  config.data.crop_size = config.eval.crop_size = (48, 32)
  config.optim.learning_rate = 1e-2
  return config
"""


def _one_device_env():
  """The environment of a user's run: one CPU device (conftest.py simulates eight)."""
  flags = [
      f
      for f in os.environ.get("XLA_FLAGS", "").split()
      if not f.startswith("--xla_force_host_platform_device_count")
  ]
  return {**os.environ, "XLA_FLAGS": " ".join(flags), "PYTHONPATH": ROOT, "CCNET_JAX_TRACEBACK": ""}


def _run(script, *args, timeout=HANG_TIMEOUT):
  return subprocess.run(
      [sys.executable, os.path.join(ROOT, script), *map(str, args)],
      cwd=ROOT,
      check=False,
      capture_output=True,
      text=True,
      timeout=timeout,
      env=_one_device_env(),
  )


def _ok(result):
  assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
  assert "Traceback" not in result.stderr, result.stderr[-4000:]
  return result


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  """(config path, workdir) of the finished tiny run."""
  root = tmp_path_factory.mktemp("entry_points")
  config = root / "tiny.py"
  config.write_text(TINY_CONFIG)
  workdir = root / "run"
  _ok(_run("train.py", "--config", config, "--workdir", workdir))
  return config, workdir


def _eval_records(workdir):
  with open(workdir / "metrics.jsonl", encoding="utf-8") as f:
    records = [json.loads(line) for line in f]
  return [(r["step"], r["eval/miou"]) for r in records if "eval/miou" in r]


def test_training_evaluates_every_eval_every_steps_and_at_the_end(run):
  _, workdir = run
  steps = [step for step, _ in _eval_records(workdir)]
  assert steps == list(range(EVAL_EVERY, TOTAL_STEPS + 1, EVAL_EVERY))
  for step in steps:
    assert any(
        name.endswith("_pred.png") for name in os.listdir(workdir / "predictions" / f"step_{step}")
    ), step


def test_only_the_last_keep_checkpoints_remain(run):
  _, workdir = run
  kept = sorted(int(name) for name in os.listdir(workdir / "checkpoints") if name.isdigit())
  assert kept == list(range(TOTAL_STEPS - KEEP + 1, TOTAL_STEPS + 1))


def test_best_is_the_first_evaluation_with_the_highest_miou(run):
  _, workdir = run
  records = _eval_records(workdir)
  step, miou = max(records, key=lambda r: r[1])  # max() keeps the first of equal values.
  with open(workdir / "best" / "metrics.json", encoding="utf-8") as f:
    best = json.load(f)
  assert best == {"step": step, "miou": miou}


def test_eval_script_reproduces_the_best_and_the_latest_models_scores(run):
  """eval.py --model=best gives the mIoU recorded for best/; the default (the latest
  checkpoint) the mIoU of the final evaluation, exactly: the mIoU is a float64 function of
  the confusion counts, and the same weights through the same compiled program give the same
  labels (CPU execution is deterministic)."""
  config, workdir = run
  records = dict(_eval_records(workdir))
  with open(workdir / "best" / "metrics.json", encoding="utf-8") as f:
    best = json.load(f)
  for model, want in (("best", best["miou"]), ("latest", records[TOTAL_STEPS])):
    result = _ok(_run("eval.py", "--config", config, "--workdir", workdir, f"--model={model}"))
    assert "mIoU" in result.stdout, result.stdout
    with open(workdir / "eval" / "metrics.json", encoding="utf-8") as f:
      got = json.load(f)["miou"]
    assert got == want, model


@pytest.mark.parametrize("script", ["train.py", "eval.py"])
def test_helpfull_lists_the_flags(script):
  """absl prints the help and exits with status 1, its convention for --help*."""
  result = _run(script, "--helpfull")
  assert result.returncode in (0, 1) and "Traceback" not in result.stderr, result.stderr
  for flag in ("--config", "--workdir") + (("--model",) if script == "eval.py" else ()):
    assert flag in result.stdout, result.stdout[:2000]
