"""The parts every experiment config shares: loss, optimiser, loop and evaluation defaults.

Dataset configs (``cityscapes.py``, ``ade20k.py``, ``synthetic.py``) start from
:func:`base_config` and override what their recipe changes.
"""

from __future__ import annotations

import ml_collections
from ml_collections import config_dict

from ccnet_jax.data.config import data_config
from ccnet_jax.data.labels import dataset_info
from ccnet_jax.evaluation.config import base_eval_config
from ccnet_jax.models.registry import model_config


def base_config(*, model: str, dataset: str) -> ml_collections.ConfigDict:
  """The official CCNet recipe (the README's "Train on Cityscapes or ADE20K") on ``dataset``
  with the registry's preset ``model``, predicting the dataset's classes."""
  config = ml_collections.ConfigDict()
  config.model = model_config(model, num_classes=dataset_info(dataset).num_classes)
  config.data = data_config(dataset)

  config.loss = loss_config()
  config.optim = optim_config()
  config.train = ml_collections.ConfigDict(
      {
          "total_steps": 60_000,
          "global_batch_size": 8,
          "seed": 0,
          "log_every": 20,
          "eval_every": 5_000,
          "checkpoint_every": 1_000,
          "keep_checkpoints": 3,
          # A model directory written by `python -m ccnet_jax.convert` or by a run's export.
          "init_from": "",
          "init_part": "backbone",  # 'backbone' (ImageNet weights) or 'all' (a full model).
          "num_summary_images": 4,
          # Several processes: one that sends no heartbeat for this long is declared lost,
          # and the others stop (JAX's default).
          "heartbeat_timeout_seconds": 100,
      }
  )
  config.eval = base_eval_config()  # Official: 769 sliding windows, 1/3 overlap.
  config.eval.crop_size = config.data.crop_size
  return config


def loss_config() -> ml_collections.ConfigDict:
  """The official criterion: CE (or OHEM CE) on the main head + 0.4 x CE on the aux head."""
  return ml_collections.ConfigDict(
      {
          "align_corners": True,  # The official code upsamples logits with align_corners=True.
          "ohem": False,
          "ohem_thresh": 0.7,
          "ohem_min_kept": 100_000,
          "aux_weight": 0.4,
      }
  )


def optim_config() -> ml_collections.ConfigDict:
  """The official optimiser: torch SGD, lr 1e-2 with poly decay (0.9), momentum 0.9.

  Weight decay 1e-4 is what both training commands of the official README pass
  (``--weight-decay 1e-4``, since its 2018-12-16 revision); ``train.py``'s default
  and ``run_local.sh`` keep an earlier 5e-4, which the README overrides.
  """
  return ml_collections.ConfigDict(
      {
          "name": "sgd",  # Or 'adamw'.
          "learning_rate": 1e-2,
          "power": 0.9,
          "momentum": 0.9,
          "nesterov": False,
          "weight_decay": 1e-4,
          "weight_decay_on": "all",  # torch SGD decays every parameter, as the official run did.
          "warmup_steps": 0,
          "warmup_start_ratio": 0.1,
          "clip_grad_norm": config_dict.placeholder(float),
      }
  )


def mmseg_schedule(
    config: ml_collections.ConfigDict, *, total_steps: int, eval_every: int
) -> ml_collections.ConfigDict:
  """What mmsegmentation's CCNet configs change in ``config``: resizing with
  align_corners=False, weight decay 5e-4, batch 16 and whole-image evaluation."""
  config.loss.align_corners = False
  config.optim.weight_decay = 5e-4
  config.train.update(
      total_steps=total_steps,
      global_batch_size=16,
      eval_every=eval_every,
      checkpoint_every=4_000,
  )
  config.eval.update(mode="whole", align_corners=False)
  return config
