"""Evaluation settings: the official CCNet single-scale sliding window, and multi-scale."""

from __future__ import annotations

import ml_collections

# The official evaluate.py --whole setting: three scales with horizontal flip.
MULTI_SCALES = (0.75, 1.0, 1.25)


def base_eval_config() -> ml_collections.ConfigDict:
  """Sliding 769x769 windows with 1/3 overlap at scale 1 (official Cityscapes protocol)."""
  config = ml_collections.ConfigDict()
  config.mode = "sliding"  # 'sliding' or 'whole' (one forward pass per image and scale).
  config.crop_size = (769, 769)
  config.overlap = 1 / 3
  config.scales = (1.0,)
  config.flip = False
  config.align_corners = True
  config.batch_size = 8  # Global; each process evaluates batch_size // process_count.
  config.num_images_to_save = 4
  return config


def multi_scale_eval_config() -> ml_collections.ConfigDict:
  """The base config with scales (0.75, 1, 1.25) and flip."""
  config = base_eval_config()
  config.scales = MULTI_SCALES
  config.flip = True
  return config
