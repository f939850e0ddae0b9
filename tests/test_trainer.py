"""The training loop in this process, on the synthetic data: resume, initialisation from a
model directory, evaluation of its models, what it writes, divergence."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from ccnet_jax import trainer
from ccnet_jax.evaluation.run import evaluate_from_workdir
from ccnet_jax.models.model_dir import flatten, model_arrays, read_arrays
from tests.helpers import ROOT, sigterm_after_steps, tiny_run_config
from tests.processes import HANG_TIMEOUT


def read_losses(workdir):
  with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
    records = [json.loads(line) for line in f]
  return {r["step"]: r["train/loss"] for r in records if "train/loss" in r}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """The tiny run twice: uninterrupted ('whole'), and preempted at step 3 then resumed
  ('split'); with what each invocation returned."""
  root = tmp_path_factory.mktemp("runs")
  config = tiny_run_config()
  results = {"whole": trainer.train_and_evaluate(config, str(root / "whole"))}
  with pytest.MonkeyPatch.context() as monkeypatch:
    sigterm_after_steps(monkeypatch, trainer, 3)
    results["preempted"] = trainer.train_and_evaluate(config, str(root / "split"))
  losses_before_resume = read_losses(root / "split")
  results["split"] = trainer.train_and_evaluate(config, str(root / "split"))
  return root, results, losses_before_resume


def test_sigterm_stops_with_the_checkpoint_of_its_step(runs):
  root, results, losses_before_resume = runs
  assert results["preempted"] == {"step": 3, "stopped": "SIGTERM"}
  assert losses_before_resume.keys() == {1, 2, 3}


def test_resume_reproduces_the_uninterrupted_run(runs):
  root, _, _ = runs
  whole, split = read_losses(root / "whole"), read_losses(root / "split")
  assert sorted(whole) == sorted(split) == [1, 2, 3, 4, 5, 6]
  # The same compiled step on the same restored state and batches: CPU execution is
  # deterministic, so bit for bit.
  assert split == whole


@pytest.mark.parametrize("part", ["all", "backbone"])
def test_init_from_loads_an_exported_model_whole_or_backbone_only(runs, part):
  root, _, _ = runs
  exported = read_arrays(root / "whole" / "model")
  start = trainer.initial_model(
      tiny_run_config(init_from=str(root / "whole" / "model"), init_part=part, seed=1)
  )
  arrays = flatten(model_arrays(start))
  same = {name: np.array_equal(np.asarray(arrays[name]), value) for name, value in exported.items()}
  loaded = [name for name in same if part == "all" or name.startswith("backbone/")]
  assert all(same[name] for name in loaded)
  assert part == "all" or not same["head/classifier/kernel"]


def test_the_latest_checkpoint_and_the_final_model_evaluate_as_training_did(runs):
  """eval.py's models: the newest checkpoint and the exported final model are the same
  network, and the training run's own final evaluation saw the same numbers."""
  root, results, _ = runs
  config = tiny_run_config()
  latest = evaluate_from_workdir(config, str(root / "split"), "latest")
  final = evaluate_from_workdir(config, str(root / "split"), "final")
  assert latest["confusion"] == final["confusion"] == results["split"]["confusion"]
  assert os.path.exists(root / "split" / "eval" / "metrics.json")


def test_a_run_leaves_tensorboard_events_and_prediction_pngs(runs):
  root, _, _ = runs
  assert any(n.startswith("events.") for n in os.listdir(root / "split" / "tensorboard"))
  pngs = os.listdir(root / "split" / "predictions" / "step_6")
  assert any(n.endswith("_overlay.png") for n in pngs)
  assert any(n.endswith("_pred.png") for n in pngs)


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
    trainer.train_and_evaluate(tiny_run_config(), str(workdir))
  assert sorted(int(p) for p in os.listdir(workdir / "checkpoints") if p.isdigit()) == [3]

  monkeypatch.setattr(trainer, "make_train_loader", make_loader)
  result = trainer.train_and_evaluate(tiny_run_config(), str(workdir))
  assert result["step"] == 6


def test_missing_cityscapes_is_one_clear_error(tmp_path):
  result = subprocess.run(
      [
          sys.executable,
          "train.py",
          "--config=configs/cityscapes.py",
          f"--workdir={tmp_path}",
          f"--config.data.root={tmp_path / 'nowhere'}",
      ],
      cwd=ROOT,
      capture_output=True,
      text=True,
      timeout=HANG_TIMEOUT,
      check=False,
  )
  assert result.returncode == 1
  lines = [line for line in result.stderr.strip().splitlines() if line.startswith("error:")]
  assert len(lines) == 1, result.stderr
  assert "Cityscapes" in lines[0] and "configs/synthetic.py" in lines[0]
  assert "Traceback" not in result.stderr


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
  run = trainer.Run(tiny_run_config(), str(tmp_path), None, _Checkpoints(latest), None, None)
  run.check_finite(2, {"finite": 1.0, "loss": 0.5})  # Finite: nothing happens.
  with pytest.raises(trainer.TrainingDiverged, match="NaN/Inf at step 5") as raised:
    run.check_finite(5, {"finite": 0.0, "loss": float("nan")})
  assert kept in str(raised.value) and "step None" not in str(raised.value)
