"""Flax NNX modules of CCNet and its baselines, the registry of variants, model directories."""
