"""CCNet-ResNet-101 on ADE20K (150 classes) with mmsegmentation's CCNet schedule.

mmseg ``ccnet_r101-d8_512x512_160k_ade20k``: ResNetV1c, 512x512 crops, batch 16,
SGD lr 0.01 momentum 0.9, weight decay 5e-4, poly 0.9, 160k iterations, whole-image
evaluation with RGB mean/std normalisation.
"""

from configs.common import base_config, mmseg_schedule


def get_config():
  config = base_config(model="ccnet_r101_d8_mmseg", dataset="ade20k")
  return mmseg_schedule(config, total_steps=160_000, eval_every=16_000)
