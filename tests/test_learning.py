"""Criss-cross attention carries the long-range cue that an FCN head cannot reach.

On the synthetic scenes (``ccnet_jax/data/synthetic.py``) a shape's class (2, 3 or 4) is the
colour of a stripe at the top of the image, at least 112 rows above the shape here. The same
network, seed, data and budget are trained twice through the project's loader, model, loss,
optimiser and train step: with R=2 criss-cross modules and with R=0 (the FCN head). The
metric is the mIoU over the three shape classes, the only ones whose label depends on the cue.

Why the margin is a fair test: a network that cannot see the stripe can at best guess the cue.
Guessing one class for every shape scores IoU 1/3 on one class and 0 on the other two (shape
mIoU 11%); guessing uniformly scores 1/9 / (1/3 + 1/3 - 1/9) = 20% on each. Unsure between three
classes, such a network mostly predicts background on the shapes and scores less. A bug that
stops attention carrying the cue (gamma held at 0, the column branch masked out) puts R=2 in
the same position.

The network starts as the demo's does (``model.init`` of configs/synthetic.py: torchvision's
backbone rule, Kaiming-normal head). From torch's default init (the official recipe's) the
attention did not learn the cue in this budget: shape mIoU R=2 10.7 against R=0 14.3, cue
accuracy 38.1%.

Measured on the 2-core CPU machine with the test's seed 0: shape mIoU R=0 11.0, R=2 62.8,
R=2 cue accuracy 100.0% (``python -m pytest -s tests/test_learning.py``; 2 min 34 s of CPU
time, 5 min 8 s of wall time under a load average of 13). The test asks for a 25-point lead
(MARGIN) and 90% cue accuracy.
"""

from __future__ import annotations

import jax
import ml_collections
import numpy as np

from ccnet_jax.data.pipeline import make_train_loader
from ccnet_jax.data.synthetic import SHAPE_RED
from ccnet_jax.evaluation.run import ModelEvaluation
from ccnet_jax.models.preprocessing import Preprocessing
from ccnet_jax.trainer import initial_model
from ccnet_jax.training.mesh import global_batch, make_mesh, replicate
from ccnet_jax.training.optim import make_optimizer
from ccnet_jax.training.state import create_train_state, merge_model
from ccnet_jax.training.step import make_train_step
from configs import synthetic

SHAPE_CLASSES = slice(SHAPE_RED, SHAPE_RED + 3)
SEED = 0
MARGIN = 0.25
MIN_CUE_ACCURACY = 0.9


def learning_config(recurrence: int, seed: int = SEED) -> ml_collections.ConfigDict:
  """The demo's model and recipe on narrower scenes and a shorter schedule.

  256x32 scenes put every shape at least 112 rows below its cue, as the demo's 256x64 do
  (at 128 rows the FCN head learnt the cue in some seeds). OHEM, the official loss option,
  spends the loss on the pixels still wrong once the background is learnt: the shapes.
  """
  config = synthetic.get_config()
  size = (256, 32)
  config.data.synthetic.update(num_train=2048, num_eval=64, image_size=size)
  config.data.crop_size = size
  config.model.head.update(recurrence=recurrence, dropout=0.0)
  config.model.aux.enabled = False
  config.loss.update(aux_weight=0.0, ohem=True, ohem_min_kept=2000)
  config.train.update(total_steps=200, global_batch_size=8, seed=seed)
  config.optim.learning_rate = 5e-3
  config.eval.update(mode="whole", batch_size=8, num_images_to_save=0)
  return config


def train_and_evaluate_on_one_device(config: ml_collections.ConfigDict) -> dict:
  """The trainer's loop without its checkpoints and logs: train, then evaluate.

  One device: the 8 host devices of the test process would shard a batch of 8 into
  single images, and the margin was measured on one.
  """
  mesh = make_mesh(jax.devices()[:1])
  loader = make_train_loader(
      config.data, global_batch_size=config.train.global_batch_size, seed=config.train.seed
  )
  tx, schedule = make_optimizer(config.optim, config.train.total_steps)
  model_def, state = create_train_state(initial_model(config), tx, seed=config.train.seed)
  state = replicate(state, mesh)
  preprocessing = Preprocessing.from_config(config.data)
  train_step = make_train_step(model_def, tx, schedule, config.loss, mesh, preprocessing)
  for _ in range(config.train.total_steps):
    state, _ = train_step(state, global_batch(next(loader), mesh))
  model = merge_model(model_def, state, train=False)
  return ModelEvaluation(config, mesh)(model, out_dir=None).metrics


def shape_miou(results: dict) -> float:
  return float(np.mean(results["iou"][SHAPE_CLASSES]))


def cue_accuracy(results: dict) -> float:
  """Of the shape pixels labelled as some shape, the fraction labelled with their cue's class.

  Chance is 1/3 for a network blind to the cue, whatever shapes it finds.
  """
  block = np.asarray(results["confusion"])[SHAPE_CLASSES, SHAPE_CLASSES]
  return float(np.trace(block) / block.sum())


def test_criss_cross_attention_carries_the_cue_an_fcn_head_cannot_reach():
  fcn = train_and_evaluate_on_one_device(learning_config(recurrence=0))
  ccnet = train_and_evaluate_on_one_device(learning_config(recurrence=2))
  print(
      f"shape mIoU R=0 {shape_miou(fcn):.3f} R=2 {shape_miou(ccnet):.3f}, R=2 cue accuracy"
      f" {cue_accuracy(ccnet):.3f}"
  )
  assert shape_miou(ccnet) >= shape_miou(fcn) + MARGIN, (fcn["iou"], ccnet["iou"])
  assert cue_accuracy(ccnet) >= MIN_CUE_ACCURACY, ccnet["confusion"]
