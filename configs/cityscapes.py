"""CCNet-ResNet-101 (R=2) on Cityscapes with the official recipe.

  python train.py --config configs/cityscapes.py --workdir runs/cs
  python train.py --config configs/cityscapes.py --config.loss.ohem=True ...   # R=2 + OHEM
  python train.py --config configs/cityscapes.py --config.model.head.recurrence=1 ...

The ImageNet backbone the official run starts from (``resnet101-imagenet.pth``) is
converted with ``python -m ccnet_jax.convert mit resnet101-imagenet.pth runs/r101``
and named with ``--config.train.init_from=runs/r101``.
"""

from configs.common import base_config


def get_config():
  config = base_config(model="ccnet_r101_official", dataset="cityscapes")
  config.train.total_steps = 60_000
  config.train.global_batch_size = 8
  return config
