"""The embedded demo: a small CCNet (R=2) on synthetic data that needs long-range context.

  python train.py --config configs/synthetic.py --workdir /tmp/demo

No download: the data (ccnet_jax/data/synthetic.py) is generated from a seed. The network
is the registry's ``ccnet_r18_tiny``: the official architecture shrunk to CPU size (ResNet-18
layout with a deep stem of width 16, output stride 8, a 64-channel head). The recipe keeps the
official poly schedule and CE + 0.4 aux loss but trains with AdamW (see below) on a short
schedule.
"""

from configs.common import base_config


def get_config():
  config = base_config(model="ccnet_r18_tiny", dataset="synthetic")

  config.train.update(
      total_steps=600,
      global_batch_size=8,
      log_every=50,
      eval_every=0,
      checkpoint_every=200,
      num_summary_images=4,
  )
  # From scratch in a few hundred steps, AdamW learns the long-range rule; SGD does not.
  config.optim.update(
      name="adamw", learning_rate=2e-3, weight_decay=1e-4, weight_decay_on="kernels"
  )
  config.eval.update(mode="whole", batch_size=8, num_images_to_save=4)
  return config
