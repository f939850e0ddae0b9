"""Training: losses, optimiser, train state, device mesh, the sharded step, checkpoints, workdir."""
