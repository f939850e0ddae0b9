"""Evaluation settings: the official CCNet single-scale sliding window."""

from __future__ import annotations

import ml_collections


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
