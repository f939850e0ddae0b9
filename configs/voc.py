"""CCNet-ResNet-101 on PASCAL VOC 2012 + SBD (21 classes) with mmsegmentation's CCNet schedule.

mmseg ``ccnet_r101-d8_512x512_40k_voc12aug`` (77.87 mIoU single-scale, 78.90 with multi-scale
and flip, in mmsegmentation's configs/ccnet/README.md): ResNetV1c-101-D8, 512x512 crops, batch
16 (4 GPUs x 4), SGD lr 0.01 momentum 0.9 weight decay 5e-4, poly 0.9, 40k iterations, RGB
mean/std, CE + 0.4 x aux CE, whole-image evaluation on val. The 20k schedule (77.27 mIoU):
``--config.train.total_steps=20000``.

  python train.py --config configs/voc.py --workdir runs/voc --config.data.root=/data \\
      --config.train.init_from=models/resnet101_v1c

Differences from mmseg's pipeline: scales 0.5..2.0 apply to the image as stored (mmseg first
fits it into 2048x512, in training and evaluation), the crop is uniform (no cat_max_ratio
re-draw), there is no photometric distortion, and the poly schedule ends at 0 rather than 1e-4.
"""

from configs.common import base_config, mmseg_schedule


def get_config():
  config = base_config(model="ccnet_r101_d8_mmseg", dataset="voc")
  return mmseg_schedule(config, total_steps=40_000, eval_every=4_000)
