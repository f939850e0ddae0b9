"""Training core: losses, optimiser, train state, device mesh and the sharded train step."""

from ccnet_jax.training.losses import (
    cross_entropy,
    default_loss_config,
    ohem_cross_entropy,
    segmentation_loss,
)
from ccnet_jax.training.mesh import (
    batch_sharding,
    global_batch,
    initialize_distributed,
    make_mesh,
    replicate,
    replicated,
)
from ccnet_jax.training.optim import default_optim_config, make_optimizer, make_schedule
from ccnet_jax.training.state import ModelDef, TrainState, create_train_state, merge_model
from ccnet_jax.training.step import make_train_step
