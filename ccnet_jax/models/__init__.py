"""Flax NNX modules of CCNet and its baselines, the registry of variants, input normalisation,
model directories."""
