"""Training: losses, optimiser, train state, device mesh, the sharded step and the loop.

The loop itself (:mod:`ccnet_jax.training.trainer`) is imported on its own: it pulls in
the data and evaluation packages, which the pieces below do not need.
"""

from ccnet_jax.training.losses import cross_entropy, ohem_cross_entropy, segmentation_loss
from ccnet_jax.training.mesh import (
    batch_sharding,
    global_batch,
    initialize_distributed,
    make_mesh,
    replicate,
    replicated,
)
from ccnet_jax.training.optim import make_optimizer, make_schedule
from ccnet_jax.training.state import ModelDef, TrainState, create_train_state, merge_model
from ccnet_jax.training.step import make_train_step
