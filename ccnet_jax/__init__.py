"""ccnet-jax: CCNet (criss-cross attention for semantic segmentation) in JAX and Flax NNX."""

__version__ = "0.1.0"
