"""Training: losses, optimiser, train state, device mesh, the sharded step and the loop."""
