"""The training loop end to end on the synthetic data: resume, preemption, divergence, errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from ccnet_jax import trainer
from ccnet_jax.evaluation.run import evaluate_from_workdir
from ccnet_jax.models.model_dir import flatten, model_arrays, read_arrays
from configs import synthetic

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_config(**train):
  """The demo config shrunk to seconds: a few steps on small images."""
  config = synthetic.get_config()
  config.data.synthetic.update(num_train=16, num_eval=4, image_size=(33, 33))
  config.data.crop_size = (33, 33)
  config.eval.update(mode="whole", num_images_to_save=1)
  config.train.update(
      total_steps=6, global_batch_size=8, log_every=1, checkpoint_every=3, eval_every=0
  )
  config.train.update(train)
  return config


def read_losses(workdir):
  with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
    records = [json.loads(line) for line in f]
  return {r["step"]: r["train/loss"] for r in records if "train/loss" in r}


def test_resume_reproduces_the_uninterrupted_run(tmp_path):
  config = tiny_config()
  trainer.train_and_evaluate(config, str(tmp_path / "whole"))
  first = trainer.train_and_evaluate(config, str(tmp_path / "split"), stop_after_steps=3)
  assert first["stopped"] == "stop_after_steps"
  assert read_losses(tmp_path / "split").keys() == {1, 2, 3}
  finished = trainer.train_and_evaluate(config, str(tmp_path / "split"))

  whole, split = read_losses(tmp_path / "whole"), read_losses(tmp_path / "split")
  assert sorted(whole) == sorted(split) == [1, 2, 3, 4, 5, 6]
  np.testing.assert_allclose(
      [split[s] for s in range(1, 7)], [whole[s] for s in range(1, 7)], rtol=1e-6
  )

  # train.init_from: a run can start from an exported model, whole or backbone only.
  exported = read_arrays(tmp_path / "whole" / "model")
  for part in ("all", "backbone"):
    start = trainer.initial_model(
        tiny_config(init_from=str(tmp_path / "whole" / "model"), init_part=part, seed=1)
    )
    arrays = flatten(model_arrays(start))
    same = {
        name: np.array_equal(np.asarray(arrays[name]), value) for name, value in exported.items()
    }
    loaded = [n for n in same if part == "all" or n.startswith("backbone/")]
    assert all(same[n] for n in loaded), part
    assert part == "all" or not same["head/classifier/kernel"]

  # eval.py's models: the newest checkpoint and the exported final model are the same
  # network, and the training run's own final evaluation saw the same numbers.
  latest = evaluate_from_workdir(config, str(tmp_path / "split"), "latest")
  final = evaluate_from_workdir(config, str(tmp_path / "split"), "final")
  assert latest["confusion"] == final["confusion"] == finished["confusion"]
  assert os.path.exists(tmp_path / "split" / "eval" / "metrics.json")
  # What the run leaves for the user: TensorBoard events and prediction PNGs.
  assert any(n.startswith("events.") for n in os.listdir(tmp_path / "split" / "tensorboard"))
  pngs = os.listdir(tmp_path / "split" / "predictions" / "step_6")
  assert any(n.endswith("_overlay.png") for n in pngs) and any(
      n.endswith("_pred.png") for n in pngs
  )


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
  make_loader = trainer.make_train_loader

  def poisoned_loader(*args, **kwargs):
    loader = make_loader(*args, **kwargs)

    class Poisoned:

      def __init__(self):
        self.count = 0

      def __next__(self):
        batch = next(loader)
        self.count += 1
        if self.count == 5:
          # Class ids the model does not have: JAX gathers their log-probabilities as NaN.
          batch = dict(batch, label=np.full_like(batch["label"], 254))
        return batch

      def get_state(self):
        return loader.get_state()

      def set_state(self, state):
        loader.set_state(state)

    return Poisoned()

  monkeypatch.setattr(trainer, "make_train_loader", poisoned_loader)
  workdir = tmp_path / "run"
  with pytest.raises(trainer.TrainingDiverged, match="NaN/Inf at step 5.*step 3"):
    trainer.train_and_evaluate(tiny_config(), str(workdir))
  assert sorted(int(p) for p in os.listdir(workdir / "checkpoints") if p.isdigit()) == [3]

  monkeypatch.setattr(trainer, "make_train_loader", make_loader)
  result = trainer.train_and_evaluate(tiny_config(), str(workdir))
  assert result["step"] == 6


def _run(script, *args, **kwargs):
  return subprocess.Popen(
      [sys.executable, script, *args],
      cwd=ROOT,
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
      **kwargs,
  )


TINY_FLAGS = [
    "--config=configs/synthetic.py",
    "--config.data.synthetic.num_train=16",
    "--config.data.synthetic.num_eval=2",
    "--config.data.synthetic.image_size=33,33",
    "--config.data.crop_size=33,33",
    "--config.eval.mode=whole",
    "--config.train.global_batch_size=8",
    "--config.train.log_every=1",
    "--config.train.eval_every=0",
]


def test_sigterm_saves_a_checkpoint_that_resumes(tmp_path):
  workdir = tmp_path / "run"
  process = _run(
      "train.py",
      *TINY_FLAGS,
      f"--workdir={workdir}",
      "--config.train.total_steps=100000",
      "--config.train.checkpoint_every=100000",
  )
  metrics = workdir / "metrics.jsonl"
  deadline = time.time() + 600  # Start-up and compilation on a busy 2-core machine.
  while not (metrics.exists() and len(metrics.read_text().splitlines()) >= 2):
    assert process.poll() is None, process.communicate()
    assert time.time() < deadline, "training did not start"
    time.sleep(0.5)
  process.send_signal(signal.SIGTERM)
  stdout, stderr = process.communicate(timeout=120)
  assert process.returncode == 0, stderr
  assert "Received SIGTERM" in stdout
  saved = [int(p) for p in os.listdir(workdir / "checkpoints") if p.isdigit()]
  assert len(saved) == 1 and saved[0] >= 2

  resumed = _run(
      "train.py", *TINY_FLAGS, f"--workdir={workdir}", f"--config.train.total_steps={saved[0] + 2}"
  )
  stdout, stderr = resumed.communicate(timeout=300)
  assert resumed.returncode == 0, stderr
  assert f"Resuming from the checkpoint of step {saved[0]}" in stdout
  assert "mIoU" in stdout


def test_missing_cityscapes_is_one_clear_error(tmp_path):
  process = _run(
      "train.py",
      "--config=configs/cityscapes.py",
      f"--workdir={tmp_path}",
      f"--config.data.root={tmp_path / 'nowhere'}",
  )
  _, stderr = process.communicate(timeout=300)
  assert process.returncode == 1
  lines = [line for line in stderr.strip().splitlines() if line.startswith("error:")]
  assert len(lines) == 1, stderr
  assert "Cityscapes" in lines[0] and "configs/synthetic.py" in lines[0]
  assert "Traceback" not in stderr


class _Checkpoints:

  def __init__(self, latest):
    self.latest = latest

  def latest_step(self):
    return self.latest


@pytest.mark.parametrize(
    "latest, kept",
    [
        (3, "the last good checkpoint (step 3)"),
        (None, "no checkpoint was written yet"),
    ],
)
def test_the_divergence_message_names_what_is_kept(tmp_path, latest, kept):
  run = trainer.Run(tiny_config(), str(tmp_path), None, _Checkpoints(latest), None, None)
  run.check_finite(2, {"finite": 1.0, "loss": 0.5})  # Finite: nothing happens.
  with pytest.raises(trainer.TrainingDiverged, match="NaN/Inf at step 5") as raised:
    run.check_finite(5, {"finite": 0.0, "loss": float("nan")})
  assert kept in str(raised.value) and "step None" not in str(raised.value)
